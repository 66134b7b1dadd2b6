"""What every exporter shares: the plan's facts read once, the memory fractions, the result type, the flags.

Memory fractions are rounded *down* (vLLM and SGLang to 0.0001, TensorRT-LLM to 0.001), so the engine
never takes more than the plan's budget. On one GPU, vLLM's `gpu_memory_utilization` and SGLang's
`mem_fraction_static` are chosen by the engine's own accounting (engine_share.py: the largest share whose
predicted peak stays within the budget). Where the engine models do not reach (several devices, a CPU plan,
draft methods they do not model), and for TensorRT-LLM, they are derived from the plan's per-device budget:
- vLLM `gpu_memory_utilization` = budget / device memory (vLLM's cap on what it allocates; the CUDA
  context and CUDA graphs come on top, said in a note);
- SGLang `mem_fraction_static` = (budget - activations - candidate buffers - runtime overhead) / device
  memory (SGLang's weights + KV pool share);
- TensorRT-LLM `free_gpu_memory_fraction` = (budget - everything but KV) / (device memory - everything but KV)
  (the KV cache's share of the memory left after weights and buffers).
With several devices the smallest per-device value is used (these engines take one value for all GPUs).
Each fraction is computed once (`Fraction`) and spelled once (`Fraction.text`): the option and the note
about it print the same digits. A fraction that rounds down to 0, or passes 1, is refused: the engine
cannot take it.

Before any of this, `_facts` runs plan.validate: an exporter never copies numbers the knobs do not give.
Model references stay as the user gave them (`ModelSource`): a preset becomes its Hub repo, a path stays
the path, a `bundled:` model is found at run time by specmemo_plan.models.bundled_path, with a comment
that says which local file it is, so no export carries this machine's site-packages path.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecMemoError
from ..kvtypes import parse_kv_dtypes
from ..placement import DeviceShare, Placement
from ..plan import Plan, validate
from .methods import Drafting

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
    predicted_startup: tuple[str, ...] = ()  # what the engine will print, by its memory model (export/startup.py)

    def as_dict(self) -> dict:
        return {
            "engine": self.engine, "engine_version": self.engine_version, "docs": list(self.docs),
            "settings": self.settings, "command": self.command, "unsupported": list(self.unsupported),
            "notes": list(self.notes), "predicted_startup": list(self.predicted_startup),
        }


def floor3(x: float) -> float:
    """Round down to 0.001: a memory fraction the engine may use without passing the plan's budget."""
    return floor_to(x, 3)


def floor_to(x: float, digits: int) -> float:
    """Round down to `digits` decimals (the 1e-9 keeps an exact k / 10^digits from dropping a step)."""
    scale = 10**digits
    return math.floor(x * scale + 1e-9) / scale


SHARE_DIGITS = 4  # vLLM's and SGLang's shares are spelled with 4 decimals (engine_share.STEPS)


# files a Hugging Face tokenizer is saved as (transformers' tokenization_utils_base and tokenizers)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class Raw(str):
    """A shell word `_flags` writes as it is (a "$VAR" expansion), not quoted."""


@dataclass(frozen=True)
class ModelSource:
    """A plan's model reference as an engine loads it, without this machine's paths."""

    ref: str  # as the user gave it: a preset name, bundled:NAME, or a path
    role: str  # target | draft
    kind: str  # hub (a preset's repo) | bundled | path
    location: str  # the Hub repo, the bundled model's name, or the path as given
    form: str  # gguf (one .gguf file) | folder (config.json + weights) | config (a config.json, no weights) | hub
    file: str | None  # bundled: which local file or folder it is, and in which package
    has_tokenizer: bool
    local_name: str | None = None  # the file or folder's own name (bundled or path)

    @property
    def var(self) -> str:
        """The shell or Python variable a bundled model's path is held in."""
        return self.role.upper()

    @property
    def shell(self) -> str:
        """The word a command line loads it by."""
        return Raw(f'"${self.var}"') if self.kind == "bundled" else self.location

    @property
    def stem(self) -> str:
        """A file name for it: the last part of the repo or path, without .gguf."""
        name = self.location.rstrip("/").split("/")[-1]
        return name[: -len(".gguf")] if name.endswith(".gguf") else name

    def locate_python(self) -> str:
        # a key of models.BUNDLED_MODELS (letters, digits, dashes): nothing to escape inside the quotes
        return f'from specmemo_plan.models import bundled_path; print(bundled_path("{self.location}"))'

    def shell_lines(self) -> list[str]:
        """A comment saying which local file a bundled model is, and the line that finds it; [] otherwise."""
        if self.kind != "bundled":
            return []
        return [f"# {self.ref} is a local {'file' if self.form == 'gguf' else 'folder'}: {self.file}",
                f"{self.var}=\"$(python -c {shlex.quote(self.locate_python())})\""]


def model_source(ref: str, role: str) -> ModelSource:
    """What an engine loads for a plan's reference (resolved as models.load_shape resolves it)."""
    from ..models import BUNDLED_MODELS, bundled_path, load_preset_config

    if ref.startswith("bundled:"):
        name = ref.split(":", 1)[1]
        _, package, rel = BUNDLED_MODELS[name]
        form = "gguf" if rel.endswith(".gguf") else "folder"
        tokenizer = form == "gguf" or any((bundled_path(name) / f).is_file() for f in TOKENIZER_FILES)
        return ModelSource(ref, role, "bundled", name, form, f"{rel} in the {package.replace('_', '-')} package",
                           tokenizer, Path(rel).name)
    path = Path(os.path.expanduser(ref))
    if path.exists():
        if path.suffix == ".gguf":
            return ModelSource(ref, role, "path", ref, "gguf", None, True, path.name)
        if path.is_dir():
            return ModelSource(ref, role, "path", ref, "folder", None,
                               any((path / f).is_file() for f in TOKENIZER_FILES), path.name)
        return ModelSource(ref, role, "path", ref, "config", None, False, path.name)
    heads = importlib.resources.files("specmemo_plan").joinpath("presets", "heads", f"{ref}.json")
    config = json.loads(heads.read_text()) if heads.is_file() else load_preset_config(ref)  # a head preset first
    return ModelSource(ref, role, "hub", config.get("_specmemo_source", ref), "hub", None, True)


def model_id(ref: str) -> str:
    """The name an engine's settings give a model: a preset's Hub repo, a path as given, `bundled:NAME` as given
    (its command finds the local file; see ModelSource)."""
    source = model_source(ref, "target")
    return source.ref if source.kind == "bundled" else source.location


def python_lines(src: ModelSource) -> list[str]:
    """Python lines that set the source's variable to what from_pretrained takes (a bundled model: a comment
    saying which local file it is, and bundled_path, which finds it where specmemo-plan is installed)."""
    if src.kind == "bundled":
        return [f"# {src.ref} is a local {'file' if src.form == 'gguf' else 'folder'}: {src.file}",
                f"{src.var} = bundled_path({src.location!r})"]
    return [f"{src.var} = " + (f"Path({src.location!r})" if src.kind == "path" else repr(src.location))]


def pretrained_args(src: ModelSource) -> str:
    """from_pretrained's arguments: a GGUF file is its folder plus gguf_file= (transformers' GGUF loading,
    which dequantises to the dtype asked)."""
    return f"{src.var}.parent, gguf_file={src.var}.name" if src.form == "gguf" else src.var


def preamble(*sources: ModelSource | None) -> str:
    """The lines before a command that find its bundled models ("" when there are none)."""
    lines = [line for s in sources if s is not None for line in s.shell_lines()]
    return "\n".join(lines) + "\n" if lines else ""


# ----------------------------------------------------------------------------- memory fractions


@dataclass(frozen=True)
class Fraction:
    """A memory fraction computed once: the option, the note and the settings all read this one value."""

    option: str  # as the engine's command line names it
    formula: str  # in words: "budget / device memory"
    numerator: int
    denominator: int
    digits: int = 3  # decimals it is rounded down to and spelled with

    @property
    def exact(self) -> float:
        return self.numerator / self.denominator

    @property
    def value(self) -> float:
        return floor_to(self.exact, self.digits)

    @property
    def text(self) -> str:
        """The one spelling of the value: `digits` decimals, as rounded."""
        return f"{self.value:.{self.digits}f}"

    def note(self, setting: str) -> str:
        return (f"{setting} = {self.formula} = {self.numerator} / {self.denominator} = {self.exact:.6f}, "
                f"rounded down to {self.text}")


def fraction(engine: str, option: str, formula: str, numerator: int, denominator: int, digits: int = 3) -> Fraction:
    """A fraction the engine can take, or a refusal: 0 after rounding down, or over 1."""
    if denominator <= 0:
        raise SpecMemoError(f"{engine}: {option} = {formula} has no value: the plan leaves {denominator} bytes of "
                            "the device for it", "make the plan for a device with more memory")
    f = Fraction(option, formula, numerator, denominator, digits)
    if f.value <= 0:
        raise SpecMemoError(f"{engine}: {option} = {formula} = {numerator} / {denominator} = {f.exact:.6f} rounds down "
                            f"to {0:.{digits}f}, which {engine} cannot take",
                            "plan with a larger --budget, or export to an engine without a fraction (llama.cpp, hf)")
    if f.exact > 1:
        raise SpecMemoError(f"{engine}: {option} = {formula} = {numerator} / {denominator} = {f.exact:.6f} is over 1: "
                            "the budget exceeds the device", "make the plan with a budget the device has")
    return f


# ----------------------------------------------------------------------------- plan facts


@dataclass(frozen=True)
class _Facts:
    """The numbers every exporter needs, read once from the plan, so no exporter reaches into the plan."""

    target_source: ModelSource
    draft_source: ModelSource | None
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
    vocab_size: int  # the target's: token ids a prompt may use
    drafting: Drafting | None = None  # the draft method and tree (methods.py); None: the legacy draft-model path
    check: object = None  # engine_share.EngineCheck: the engine model that sizes the export; a str: why none does
    enforce_eager: bool = False  # export without CUDA graphs (vLLM --enforce-eager, SGLang --disable-cuda-graph)

    @property
    def target(self) -> str:
        """The target as the settings name it (model_id)."""
        return model_id(self.target_source.ref)

    @property
    def draft(self) -> str | None:
        return model_id(self.draft_source.ref) if self.draft_source else None

    @property
    def layers_per_device(self) -> list[int]:
        """Decoder layers per device: the partition a multi-device export hands the engine."""
        return [d.num_layers for d in self.per_device]

    @property
    def draft_device(self) -> int:
        """Where the plan puts the draft (next to the verify logits); 0 for a plan without one."""
        return self.placement.draft_device if self.placement.draft_device is not None else 0


def _facts(plan: Plan) -> _Facts:
    """The plan's facts, after plan.validate: an export never carries numbers the knobs do not give."""
    checked = validate(plan)
    knobs = plan.knobs
    return _Facts(
        target_source=model_source(plan.target.ref, "target"),
        draft_source=model_source(plan.draft.ref, "draft") if plan.draft else None,
        k=knobs.draft_length, batch=knobs.batch_size, context=knobs.max_context, chunk=knobs.chunk,
        weight_dtype=knobs.weight_dtype, draft_dtype=knobs.draft_weight_dtype, kv_dtype=knobs.cache_dtype,
        num_devices=plan.device.count, device_memory=plan.device.total_memory_bytes, kind=plan.device.kind,
        per_device=tuple(plan.per_device), placement=plan.placement,
        greedy=plan.generation.sampling == "greedy", temperature=plan.generation.temperature,
        seed=plan.generation.seed, max_new_tokens=plan.generation.max_new_tokens,
        vocab_size=checked.target.vocab_size, drafting=_drafting(plan),
    )


def _drafting(plan: Plan) -> Drafting:
    """The plan's method and tree as the exporters read them; a plan without a method (older plans) is a
    draft-model chain when it has a draft, none otherwise."""
    knobs = plan.knobs
    method = getattr(knobs, "draft_method", None) or ("draft-model" if plan.draft else "none")
    if method == "none":
        return Drafting("none", 0)
    topk = getattr(knobs, "tree_topk", None) or 1
    depth = (getattr(knobs, "tree_depth", None) or knobs.draft_length) if topk > 1 else knobs.draft_length
    return Drafting(method, depth, topk, knobs.draft_length if topk > 1 else None,
                    head=model_id(plan.draft.ref) if plan.draft else None)


# ----------------------------------------------------------------------------- the three fractions


def _used(f: _Facts) -> list[DeviceShare]:
    """Devices that hold part of the plan: an empty one would set the minimum without running anything."""
    return [d for d in f.per_device if d.used]


def _utilization(f: _Facts, engine: str = "vLLM") -> Fraction:
    """vLLM's cap on everything it allocates: budget / device memory."""
    return fraction(engine, "--gpu-memory-utilization", "budget / device memory",
                    min(d.budget_bytes for d in _used(f)), f.device_memory, SHARE_DIGITS)


def _static_fraction(f: _Facts) -> Fraction:
    """SGLang's weights + KV pool: (budget - activations - candidate buffers - runtime overhead) / device memory."""
    def static(d: DeviceShare) -> int:
        c = d.memory.components
        return d.budget_bytes - c["activations"] - c["candidate_buffers"] - c["runtime_overhead"]

    return fraction("SGLang", "--mem-fraction-static",
                    "(budget - activations - candidate buffers - runtime overhead) / device memory",
                    min(static(d) for d in _used(f)), f.device_memory, SHARE_DIGITS)


def _free_kv_fraction(f: _Facts) -> Fraction:
    """TensorRT-LLM's KV share of what is left after everything but KV: (budget - rest) / (device memory - rest)."""
    def rest(d: DeviceShare) -> int:
        c = d.memory.components
        return d.memory.total_bytes - c["target_kv"] - c["draft_kv"]

    d = min(_used(f), key=lambda d: (d.budget_bytes - rest(d)) / max(1, f.device_memory - rest(d)))
    return fraction("TensorRT-LLM", "--kv_cache_free_gpu_memory_fraction",
                    "(budget - everything but KV) / (device memory - everything but KV)",
                    d.budget_bytes - rest(d), f.device_memory - rest(d))


# ----------------------------------------------------------------------------- shared wording and flags


def _needs_gpu(f: _Facts, engine: str, out: list) -> None:
    if f.kind == "cpu":
        out.append(f"device: this plan is for the CPU; {engine}'s speculative decoding runs on GPUs")


def one_kv_type(f: _Facts, engine: str, out: list) -> str:
    """The one cache type of engines that take a single --kv-cache-dtype (vLLM, SGLang, TensorRT-LLM): the
    plan's K type; a separate V type, or a llama.cpp block type they lack, is listed in `out`."""
    k, v = parse_kv_dtypes(f.kv_dtype)
    if k != v:
        out.append(f"KV cache {k.name}:{v.name}: {engine} takes one type for K and V; the K type is exported")
    if k.is_block_quantized:
        out.append(f"{k.name} KV cache: a llama.cpp block type {engine} does not have; 'auto' keeps the model "
                   f"dtype and needs about {16 / k.bits_per_value:.1f}x the plan's K bytes")
        return "fp16"
    return k.name


def _float_dtype_note(f: _Facts, engine: str, out: list) -> None:
    """Engines that load quantised weights take the format from the checkpoint, not from a flag: say which."""
    for label, dtype in (("target", f.weight_dtype), ("draft", f.draft_dtype or f.weight_dtype)):
        if label == "draft" and not f.draft:
            continue
        if dtype not in TORCH_DTYPE_NAMES:
            out.append(f"{label} weights in {dtype}: {engine} takes the quantisation from the model it loads; give it "
                       f"{QUANTISED_CHECKPOINTS[dtype]}; its bytes differ slightly from the plan's")


def word(value) -> str:
    """One shell word: a Raw value as it is, a Fraction as its one spelling, anything else quoted as needed."""
    if isinstance(value, Fraction):
        return value.text
    return value if isinstance(value, Raw) else shlex.quote(str(value))


def _flags(pairs) -> str:
    """One flag per line; None and False drop the flag, True writes it bare, a Raw value goes in unquoted,
    a Fraction as its one spelling."""
    parts = []
    for flag, value in pairs:
        if value is None or value is False:
            continue
        parts.append(flag if value is True else f"{flag} {word(value)}")
    return " \\\n  ".join(parts)
