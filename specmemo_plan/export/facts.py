"""What every exporter shares: the plan's facts read once, the memory fractions, the result type, the flags.

Memory fractions are derived from the plan's per-device budget and rounded *down* to 0.001, so the
engine never takes more than the plan's budget:
- vLLM `gpu_memory_utilization` = budget / device memory (vLLM's cap on everything it allocates);
- SGLang `mem_fraction_static` = (budget - activations - candidate buffers - runtime overhead) / device
  memory (SGLang's weights + KV pool share);
- TensorRT-LLM `free_gpu_memory_fraction` = (budget - everything but KV) / (device memory - everything but KV)
  (the KV cache's share of the memory left after weights and buffers).
With several devices the smallest per-device value is used (these engines take one value for all GPUs).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field

from ..errors import SpecMemoError
from ..placement import DeviceShare, Placement
from ..plan import Plan

TORCH_DTYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}

QUANTISED_CHECKPOINTS = {
    "int4": "a GPTQ or AWQ int4 checkpoint (groups of 128, as the plan assumes)",
    "int8": "an int8 checkpoint (GPTQ 8-bit or bitsandbytes LLM.int8)",
    "fp8": "an FP8 checkpoint, or on-the-fly FP8 (--quantization fp8 where the engine has it)",
}


@dataclass(frozen=True)
class ExportResult:
    engine: str  # one of ENGINES
    engine_version: str  # the version whose documentation the option names follow
    settings: dict  # option -> value, as the engine names them
    command: str  # a command line (or Python snippet) that applies them
    unsupported: list[str] = field(default_factory=list)  # parts of the plan the engine cannot express
    notes: list[str] = field(default_factory=list)  # how a value was derived, what to check
    docs: tuple[str, ...] = ()  # where the option names come from

    def as_dict(self) -> dict:
        return {
            "engine": self.engine, "engine_version": self.engine_version, "docs": list(self.docs),
            "settings": self.settings, "command": self.command, "unsupported": list(self.unsupported),
            "notes": list(self.notes),
        }


def floor3(x: float) -> float:
    """Round down to 0.001: a memory fraction the engine may use without passing the plan's budget."""
    return math.floor(x * 1000 + 1e-9) / 1000


def model_id(ref: str) -> str:
    """What an engine loads for a plan's model reference: a preset's Hugging Face repo, a bundled model's
    path, or the path as given."""
    from ..models import BUNDLED_MODELS, bundled_path, list_presets, load_preset_config

    if ref.startswith("bundled:"):
        name = ref.split(":", 1)[1]
        if name in BUNDLED_MODELS:
            try:
                return str(bundled_path(name))
            except SpecMemoError:
                return ref
        return ref
    if ref in list_presets():
        return load_preset_config(ref).get("_specmemo_source", ref)
    return ref


# ----------------------------------------------------------------------------- plan facts


@dataclass(frozen=True)
class _Facts:
    """The numbers every exporter needs, read once from the plan, so no exporter reaches into the plan."""

    target: str
    draft: str | None
    k: int
    batch: int
    context: int
    chunk: int
    weight_dtype: str
    draft_dtype: str | None
    kv_dtype: str
    num_devices: int
    device_memory: int
    kind: str
    per_device: tuple[DeviceShare, ...]  # one share per device, a one-device plan included
    placement: Placement  # device_map, max_memory, the draft's device
    greedy: bool
    temperature: float
    seed: int
    max_new_tokens: int

    @property
    def layers_per_device(self) -> list[int]:
        """Decoder layers per device: the partition a multi-device export hands the engine."""
        return [d.num_layers for d in self.per_device]

    @property
    def draft_device(self) -> int:
        """Where the plan puts the draft (next to the verify logits); 0 for a plan without one."""
        return self.placement.draft_device if self.placement.draft_device is not None else 0


def _facts(plan: Plan) -> _Facts:
    knobs = plan.knobs
    return _Facts(
        target=model_id(plan.target.ref), draft=model_id(plan.draft.ref) if plan.draft else None,
        k=knobs.draft_length, batch=knobs.batch_size, context=knobs.max_context, chunk=knobs.chunk,
        weight_dtype=knobs.weight_dtype, draft_dtype=knobs.draft_weight_dtype, kv_dtype=knobs.cache_dtype,
        num_devices=plan.device.count, device_memory=plan.device.total_memory_bytes, kind=plan.device.kind,
        per_device=tuple(plan.per_device), placement=plan.placement,
        greedy=plan.generation.sampling == "greedy", temperature=plan.generation.temperature,
        seed=plan.generation.seed, max_new_tokens=plan.generation.max_new_tokens,
    )


# ----------------------------------------------------------------------------- memory fractions


def _used(f: _Facts) -> list[DeviceShare]:
    """Devices that hold part of the plan: an empty one would set the minimum without running anything."""
    return [d for d in f.per_device if d.used]


def _utilization(f: _Facts) -> float:
    return floor3(min(d.budget_bytes for d in _used(f)) / f.device_memory)


def _static_fraction(f: _Facts) -> float:
    def static(d: DeviceShare) -> int:
        c = d.memory.components
        return d.budget_bytes - c["activations"] - c["candidate_buffers"] - c["runtime_overhead"]

    return floor3(min(static(d) for d in _used(f)) / f.device_memory)


def _free_kv_fraction(f: _Facts) -> float:
    def share(d: DeviceShare) -> float:
        c = d.memory.components
        rest = d.memory.total_bytes - c["target_kv"] - c["draft_kv"]
        return (d.budget_bytes - rest) / (f.device_memory - rest)

    return floor3(min(share(d) for d in _used(f)))


# ----------------------------------------------------------------------------- shared wording and flags


def _needs_gpu(f: _Facts, engine: str, out: list) -> None:
    if f.kind == "cpu":
        out.append(f"device: this plan is for the CPU; {engine}'s speculative decoding runs on GPUs")


def _float_dtype_note(f: _Facts, engine: str, out: list) -> None:
    """Engines that load quantised weights take the format from the checkpoint, not from a flag: say which."""
    for label, dtype in (("target", f.weight_dtype), ("draft", f.draft_dtype or f.weight_dtype)):
        if label == "draft" and not f.draft:
            continue
        if dtype not in TORCH_DTYPE_NAMES:
            out.append(f"{label} weights in {dtype}: {engine} takes the quantisation from the model it loads; give it "
                       f"{QUANTISED_CHECKPOINTS[dtype]}; its bytes differ slightly from the plan's")


def _flags(pairs) -> str:
    """One flag per line; None and False drop the flag, True writes it bare."""
    parts = []
    for flag, value in pairs:
        if value is None or value is False:
            continue
        parts.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    return " \\\n  ".join(parts)
