"""The plan file: what to run, inside which budget, and what it is predicted to cost.

JSON with `"schema_version": 2`, written atomically (temp file in the same folder + rename).
`Plan.from_dict` / `read_plan` check every field's type and range and name the one that is wrong
("field knobs.batch_size must be positive, got -1"): a non-UTF-8 file, invalid JSON, NaN or Infinity
(JSON has neither; Python's json reads them unless told not to), a list instead of an object.
`validate(plan)` (plan_check.py) then recomputes the prediction from the knobs and refuses a plan whose
stored numbers differ: run it before trusting a plan's numbers (the engine, `export`).
Every plan is a plan over `device.count` devices: `per_device` holds each device's share and
`placement` how they connect; a one-device plan has one share holding everything (docs/placement.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecMemoError
from .files import write_json_atomic
from .memory import Knobs
from .models import ModelShape
from .placement import DEFAULT_POLICY, DeviceShare, Placement, split_layers

# 2: per_device for every plan (one device included) and a typed `placement` (was provenance.split)
SCHEMA_VERSION = 2
SAMPLING_MODES = ("greedy", "sample")
DEVICE_KINDS = ("cpu", "cuda", "rocm")
# torch.manual_seed takes seeds in [-0x8000_0000_0000_0000, 0xffff_ffff_ffff_ffff] (its docstring)
SEED_RANGE = (-(2**63), 2**64 - 1)


@dataclass(frozen=True)
class ModelRef:
    ref: str  # as given: a preset name, bundled:NAME, or a path
    dtype: str  # weight dtype
    fingerprint: str  # ModelShape.fingerprint: the engine refuses a model whose shape differs
    num_params: int


@dataclass(frozen=True)
class DeviceSpec:
    kind: str  # cpu | cuda | rocm
    name: str  # as the device reports itself, or the profile's name
    total_memory_bytes: int  # of one device
    profile: str | None = None  # hardware profile key the predictions used
    count: int = 1  # devices the plan spans (layer-wise split when > 1)


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int = 256  # per request; prompt + new tokens must fit knobs.max_context
    sampling: str = "greedy"  # greedy | sample (lossless speculative sampling)
    temperature: float = 1.0  # only with sampling
    seed: int = 0


@dataclass(frozen=True)
class Prediction:
    memory: dict  # MemoryBreakdown.as_dict(): total_bytes, generation_bytes, components
    tokens_per_s: float | None = None  # predicted, all sequences together
    plain_tokens_per_s: float | None = None  # the same knobs without a draft
    speedup: float | None = None  # tokens_per_s / plain_tokens_per_s
    acceptance_rate: float | None = None  # per-token acceptance a
    expected_tokens_per_step: float | None = None  # accepted drafts + the bonus token
    latency_source: str = "none"  # measured:<profile file> | roofline:<profile> | bandwidth:<GB/s> | none
    acceptance_source: str = "assumed"  # measured | given | assumed


@dataclass(frozen=True)
class Plan:
    target: ModelRef
    draft: ModelRef | None
    device: DeviceSpec
    budget_bytes: int  # per device
    knobs: Knobs
    generation: Generation
    prediction: Prediction
    per_device: tuple[DeviceShare, ...]  # each device's budget and components (one entry per device)
    placement: Placement  # how the devices connect: device_map, max_memory, draft device, hops
    provenance: dict = field(default_factory=dict)  # how it was made: command, tool version, notes
    measured: dict | None = None  # filled by `tune --verify`: measured beside predicted
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("target", "draft", "device", "knobs", "generation", "prediction"):
            data[name] = None if data[name] is None else dataclasses.asdict(data[name])
        data["per_device"] = [d.as_dict() for d in self.per_device]
        data["placement"] = self.placement.as_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "plan") -> "Plan":
        """A checked Plan from its JSON object (plan_schema.parse_plan: each wrong field one line naming it)."""
        from .plan_schema import parse_plan

        return parse_plan(data, where)


# ----------------------------------------------------------------------------- IO


def write_plan(plan: Plan, path: str | os.PathLike) -> Path:
    """Write atomically (files.write_json_atomic): never a half-written plan, never NaN or Infinity."""
    from .plan_schema import first_non_finite

    data = plan.to_dict()
    bad = first_non_finite(data)
    if bad is not None:
        raise SpecMemoError(f"plan field {bad[0]} is {bad[1]}: JSON has no NaN or Infinity", "give finite numbers")
    return write_json_atomic(data, path)


def read_plan(path: str | os.PathLike) -> Plan:
    """Read and check a plan file; every problem is one SpecMemoError naming the file and the field."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():  # a FIFO would block, a device never end
            raise SpecMemoError(f"cannot read the plan {path}: it is not a regular file",
                                "give the JSON file `specmemo-plan plan` or `tune` wrote")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecMemoError(f"no plan file at {path}", "write one with `specmemo-plan plan` or `specmemo-plan tune`") from None
    except OSError as exc:
        raise SpecMemoError(f"cannot read the plan {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecMemoError(f"{path} is not a plan: byte {exc.start} is not UTF-8 text",
                            "give the JSON file `specmemo-plan plan` or `tune` wrote") from None
    from .plan_schema import loads

    try:
        data = loads(text)
    except json.JSONDecodeError as exc:
        raise SpecMemoError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except (ValueError, RecursionError) as exc:  # an integer past Python's digit limit, nesting past the stack
        raise SpecMemoError(f"{path} is not a plan: {str(exc).splitlines()[0]}") from None
    return Plan.from_dict(data, where=str(path))


def validate(plan: Plan, target: ModelShape | None = None, draft: ModelShape | None = None):
    """The plan's prediction recomputed from its knobs, and refused when it differs (plan_check.validate)."""
    from .plan_check import validate as _validate

    return _validate(plan, target, draft)


# ----------------------------------------------------------------------------- making a plan


def model_ref(ref: str, shape: ModelShape, dtype: str) -> ModelRef:
    return ModelRef(ref=ref, dtype=dtype, fingerprint=shape.fingerprint, num_params=shape.num_params)


def make_plan(
    target_ref: str,
    target: ModelShape,
    draft_ref: str | None,
    draft: ModelShape | None,
    knobs: Knobs,
    device: DeviceSpec,
    budget_bytes: int,
    generation: Generation = Generation(),
    device_overhead_bytes: int = 0,
    throughput: dict | None = None,
    provenance: dict | None = None,
    policy: str = DEFAULT_POLICY,
) -> Plan:
    """A plan from explicit knobs over `device.count` devices of `budget_bytes` each. Refuses one whose
    predicted memory exceeds the budget on any device, whose prompt + new tokens cannot fit the
    context, or that `read_plan` would refuse (a NaN temperature, a seed torch cannot take): the plan
    is read back through Plan.from_dict before it is returned. `throughput` holds the Prediction's speed fields."""
    from .units import format_bytes

    knobs.validate(has_draft=draft is not None)
    _check_generation(generation)
    if generation.max_new_tokens >= knobs.max_context:
        raise SpecMemoError(
            f"max_new_tokens ({generation.max_new_tokens}) leaves no room for a prompt in a {knobs.max_context}-token context",
            "raise --context or lower --max-new-tokens",
        )
    split = split_layers(target, draft, knobs, [budget_bytes] * device.count, device_overhead_bytes, policy)
    worst = max(split.devices, key=lambda s: s.memory.total_bytes - s.budget_bytes)
    if worst.memory.total_bytes > budget_bytes:
        raise SpecMemoError(
            f"the plan needs {format_bytes(worst.memory.total_bytes)}, over the budget of {format_bytes(budget_bytes)} "
            f"by {format_bytes(worst.memory.total_bytes - budget_bytes)}",
            "lower --batch, --context or --draft-length, or see `specmemo-plan fit`",
        )
    plan = Plan(
        target=model_ref(target_ref, target, knobs.weight_dtype),
        draft=model_ref(draft_ref, draft, knobs.draft_dtype) if draft is not None else None,
        device=device,
        budget_bytes=budget_bytes,
        knobs=knobs,
        generation=generation,
        prediction=Prediction(memory=split.total.as_dict(), **(throughput or {})),
        per_device=split.devices,
        placement=split.placement,
        provenance=provenance or {},
    )
    Plan.from_dict(plan.to_dict(), where="the new plan")  # what is written must read back
    return plan


# vLLM treats temperatures below _SAMPLING_EPS = 1e-5 as greedy (vllm/sampling_params.py): below it logits / T
# overflow; a plan asks for greedy decoding instead
MIN_TEMPERATURE = 1e-5


def _check_generation(g: Generation) -> None:
    """The sampling settings a plan may hold: a finite temperature > 0 (the sampler divides the logits by it)."""
    t = g.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise SpecMemoError(f"temperature must be a finite number > 0, got {t!r}", "give --temperature such as 0.7")
    if g.sampling == "sample" and t < MIN_TEMPERATURE:
        raise SpecMemoError(f"temperature {t!r} is below {MIN_TEMPERATURE:g}: logits / T overflow to infinity",
                            "use --sampling greedy (what such a temperature means), or a temperature >= 1e-05")
    if g.sampling not in SAMPLING_MODES:
        raise SpecMemoError(f"sampling must be one of {', '.join(SAMPLING_MODES)}, got {g.sampling!r}")
    if isinstance(g.seed, bool) or not isinstance(g.seed, int) or not SEED_RANGE[0] <= g.seed <= SEED_RANGE[1]:
        raise SpecMemoError(f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (torch.manual_seed's "
                            f"range), got {g.seed!r}")
