"""The plan file: what to run, inside which budget, and what it is predicted to cost.

JSON with `"schema_version": 2`, written atomically (temp file in the same folder + rename).
`Plan.from_dict` validates every field and names the one that is wrong ("knobs.batch_size: ...").
Every plan is a plan over `device.count` devices: `per_device` holds each device's share and
`placement` how they connect; a one-device plan has one share holding everything (docs/placement.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecMemoError
from .files import write_json_atomic
from .memory import COMPONENTS, Knobs
from .models import ModelShape
from .placement import DEFAULT_POLICY, DeviceShare, Placement, split_layers

# 2: per_device for every plan (one device included) and a typed `placement` (was provenance.split)
SCHEMA_VERSION = 2
SAMPLING_MODES = ("greedy", "sample")
DEVICE_KINDS = ("cpu", "cuda", "rocm")


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
    def from_dict(cls, data: Any) -> "Plan":
        return _parse_plan(data)


# ----------------------------------------------------------------------------- IO


def write_plan(plan: Plan, path: str | os.PathLike) -> Path:
    """Write atomically (files.write_json_atomic): never a half-written plan."""
    return write_json_atomic(plan.to_dict(), path)


def read_plan(path: str | os.PathLike) -> Plan:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpecMemoError(f"no plan file at {path}", "write one with `specmemo-plan plan` or `specmemo-plan tune`") from None
    except json.JSONDecodeError as exc:
        raise SpecMemoError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    return _parse_plan(data, where=str(path))


# ----------------------------------------------------------------------------- validation


class _Reader:
    """Typed access to a JSON object that names the field path in every error."""

    def __init__(self, data: Any, path: str, where: str):
        if not isinstance(data, dict):
            raise SpecMemoError(f"{where}: {path or 'plan'} must be an object")
        self.data, self.path, self.where = data, path, where

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, why: str):
        raise SpecMemoError(f"{self.where}: field {self._name(key)} {why}", "regenerate the plan, or fix that field")

    def get(self, key: str, types, optional: bool = False, default=None):
        if key not in self.data or self.data[key] is None:
            if optional:
                return default
            self.fail(key, "is missing")
        value = self.data[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            self.fail(key, f"must be {getattr(types, '__name__', types)}, got {value!r}")
        if not isinstance(value, types):
            self.fail(key, f"has the wrong type ({type(value).__name__})")
        return value

    def positive(self, key: str, optional: bool = False, default=None, allow_zero: bool = False):
        value = self.get(key, int, optional, default)
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            self.fail(key, f"must be {'>= 0' if allow_zero else 'positive'}, got {value}")
        return value

    def choice(self, key: str, options, optional: bool = False, default=None):
        value = self.get(key, str, optional, default)
        if value is not None and value not in options:
            self.fail(key, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def sub(self, key: str, optional: bool = False):
        if optional and self.data.get(key) is None:
            return None
        if key not in self.data:
            self.fail(key, "is missing")
        return _Reader(self.data[key], self._name(key), self.where)


def _model_ref(r: _Reader | None) -> ModelRef | None:
    if r is None:
        return None
    return ModelRef(
        ref=r.get("ref", str), dtype=r.get("dtype", str), fingerprint=r.get("fingerprint", str),
        num_params=r.positive("num_params"),
    )


def _parse_plan(data: Any, where: str = "plan") -> Plan:
    r = _Reader(data, "", where)
    version = r.get("schema_version", int)
    if version != SCHEMA_VERSION:
        r.fail("schema_version", f"is {version}; this version reads {SCHEMA_VERSION}")
    k = r.sub("knobs")
    knobs = Knobs(
        batch_size=k.positive("batch_size"),
        max_context=k.positive("max_context"),
        draft_length=k.positive("draft_length", allow_zero=True),
        weight_dtype=k.get("weight_dtype", str),
        draft_weight_dtype=k.get("draft_weight_dtype", str, optional=True),
        kv_dtype=k.get("kv_dtype", str, optional=True),
        prefill_chunk=k.positive("prefill_chunk", optional=True),
    )
    draft = _model_ref(r.sub("draft", optional=True))
    try:
        knobs.validate(has_draft=draft is not None)
    except SpecMemoError as exc:
        raise SpecMemoError(f"{where}: knobs: {exc.message}", exc.hint) from None
    d = r.sub("device")
    g = r.sub("generation")
    p = r.sub("prediction")
    memory = p.sub("memory")
    components = memory.sub("components")
    for name in COMPONENTS:
        components.positive(name, allow_zero=True)
    temperature = g.get("temperature", (int, float), optional=True, default=1.0)
    if temperature <= 0:
        g.fail("temperature", f"must be positive, got {temperature}")
    number = (int, float)
    return Plan(
        schema_version=version,
        target=_model_ref(r.sub("target")),
        draft=draft,
        device=DeviceSpec(
            kind=d.choice("kind", DEVICE_KINDS), name=d.get("name", str),
            total_memory_bytes=d.positive("total_memory_bytes"),
            profile=d.get("profile", str, optional=True), count=d.positive("count", optional=True, default=1),
        ),
        budget_bytes=r.positive("budget_bytes"),
        knobs=knobs,
        generation=Generation(
            max_new_tokens=g.positive("max_new_tokens"),
            sampling=g.choice("sampling", SAMPLING_MODES),
            temperature=float(temperature),
            seed=g.get("seed", int, optional=True, default=0),
        ),
        prediction=Prediction(
            memory=memory.data,
            tokens_per_s=p.get("tokens_per_s", number, optional=True),
            plain_tokens_per_s=p.get("plain_tokens_per_s", number, optional=True),
            speedup=p.get("speedup", number, optional=True),
            acceptance_rate=p.get("acceptance_rate", number, optional=True),
            expected_tokens_per_step=p.get("expected_tokens_per_step", number, optional=True),
            latency_source=p.get("latency_source", str, optional=True, default="none"),
            acceptance_source=p.get("acceptance_source", str, optional=True, default="assumed"),
        ),
        per_device=_per_device(r, d.positive("count", optional=True, default=1)),
        placement=_placement(r.sub("placement")),
        provenance=r.get("provenance", dict, optional=True, default={}),
        measured=r.get("measured", dict, optional=True),
    )


def _per_device(r: _Reader, count: int) -> tuple[DeviceShare, ...]:
    entries = r.get("per_device", list)
    if len(entries) != count:
        r.fail("per_device", f"has {len(entries)} entries for device.count {count}")
    shares = []
    for i, entry in enumerate(entries):
        e = _Reader(entry, f"per_device[{i}]", r.where)
        for key in ("index", "budget_bytes", "accelerate_weight_bytes", "target_params"):
            e.positive(key, allow_zero=True)
        e.get("holds", list), e.get("modules", list), e.get("layers", list, optional=True)
        components = e.sub("components")
        for name in COMPONENTS:
            components.positive(name, allow_zero=True)
        shares.append(DeviceShare.from_dict(entry))
    return tuple(shares)


def _placement(r: _Reader) -> Placement:
    r.choice("policy", ("balanced", "sequential"))
    r.positive("head_device", allow_zero=True), r.positive("hops", allow_zero=True)
    r.get("device_map", dict), r.get("duplicates", dict), r.get("max_memory", dict, optional=True)
    return Placement.from_dict(r.data)


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
    predicted memory exceeds the budget on any device, or whose prompt + new tokens cannot fit the
    context. `throughput` holds the Prediction's speed fields."""
    from .units import format_bytes

    knobs.validate(has_draft=draft is not None)
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
    return Plan(
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
