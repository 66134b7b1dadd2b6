"""What the engine checks before it loads anything: the plan against this engine and this machine.

Each refusal is one SpecMemoError naming the plan field:
- `check_supported`: formats and layouts this engine cannot run (`knobs.weight_dtype`, ...);
- `check_prediction`: specmemo_plan.plan.validate: the models are the ones the plan was made for and
  its prediction is the one its knobs give (a stale or hand-edited plan is refused; the memory report
  compares against the recomputed prediction);
- `check_model_type`: the model families this engine runs;
- `resolve_device`: the device kind, identity and memory, the same questions on a CPU as on a GPU:
  the plan's device name (or profile) against this one's, its budget against this device's total, and
  what the engine is about to allocate against the memory free now.
"""

from __future__ import annotations

import torch

from specmemo_plan.drafting.trees import RUNTIME_TREE_METHODS as TREE_METHODS
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.models import SUPPORTED_MODEL_TYPES, ModelShape
from specmemo_plan.plan import Plan
from specmemo_plan.units import format_bytes

from .placement import check_devices

STATIC_COMPONENTS = ("target_weights", "draft_weights", "target_kv", "draft_kv", "candidate_buffers")
ENGINE_WEIGHT_DTYPES = ("fp32", "fp16", "bf16")
ENGINE_KV_DTYPES = ("fp32", "fp16", "bf16")
ENGINE_DRAFT_METHODS = ("draft-model", "eagle", "ngram", "none")  # specmemo_plan/drafting/methods.py names the others
# The bundled profile every CPU matches (hardware/matching.py): a plan made `--profile cpu` names no machine,
# so its identity cannot be checked, only its memory.
GENERIC_CPU_PROFILE = "cpu"


def refuse(field_name: str, why: str, hint: str) -> SpecMemoError:
    return SpecMemoError(f"{field_name}: {why}", hint)


def check_supported(plan: Plan) -> None:
    """Formats and layouts this engine cannot run, refused before anything loads."""
    knobs = plan.knobs
    method = knobs.method(plan.draft is not None)
    if method not in ENGINE_DRAFT_METHODS:
        raise refuse("knobs.draft_method", f"the engine runs draft-model, EAGLE-head and n-gram drafting and plain "
                     f"decoding, not {method}", "export the plan to an engine that runs it (specmemo-plan export), "
                     "or plan a draft model, an eagle head or ngram")
    if not knobs.tree.is_chain and method not in TREE_METHODS:
        raise refuse("knobs.tree_topk", f"the engine verifies token trees for {', '.join(TREE_METHODS)} drafting, not "
                     f"{method} (top-k {knobs.tree.topk})", "plan a chain (drop --tree-topk)")
    if method == "eagle" and not knobs.tree.is_chain:
        from .eagle_tree import check_tree_slots

        check_tree_slots(knobs.tree)
    if method == "eagle" and knobs.embedding_policy != "shared":
        raise refuse("knobs.head_embedding", "the engine's EAGLE head reads the target's embedding, it holds no copy",
                     "plan the head with --head-embedding shared")
    if knobs.weight_dtype not in ENGINE_WEIGHT_DTYPES:
        raise refuse("knobs.weight_dtype", f"the engine runs fp32, fp16 or bf16 weights, not {knobs.weight_dtype}",
                     "plan with --dtype fp16, or export the plan to an engine that runs quantised weights")
    if knobs.draft_dtype not in ENGINE_WEIGHT_DTYPES:
        raise refuse("knobs.draft_weight_dtype", f"the engine runs fp32, fp16 or bf16 weights, not {knobs.draft_dtype}",
                     "plan the draft in fp16")
    if knobs.cache_dtype not in ENGINE_KV_DTYPES:
        raise refuse("knobs.kv_dtype", f"the engine keeps KV in fp32, fp16 or bf16, not {knobs.cache_dtype}",
                     "plan with the default KV dtype")
    check_devices(plan)  # a multi-device plan needs that many CUDA/ROCm devices (engine/placement.py)


def check_model_type(role: str, shape: ModelShape) -> None:
    """The families specmemo_plan.models sizes by formula (specmemo_plan.architectures), whose caches
    engine.cache lays out from `shape.cache_layers` (sliding windows as ring buffers); a model the
    planner sized only through transformers' meta build is refused, its cache layout being a guess."""
    if shape.model_type not in SUPPORTED_MODEL_TYPES:
        raise refuse(role, f"model_type {shape.model_type} is not supported by the engine",
                     "the engine runs " + ", ".join(SUPPORTED_MODEL_TYPES) + " models")


# ----------------------------------------------------------------------------- the prediction


def check_prediction(plan: Plan, target: ModelShape, draft: ModelShape | None) -> dict:
    """The plan's prediction recomputed from its knobs and these models (specmemo_plan.plan.validate:
    fingerprints, dtypes, every component, per_device, placement, the budget), refused naming the first
    field that differs. Returns the recomputed memory (MemoryBreakdown.as_dict()): the engine allocates
    its static parts from the same functions and reports measured memory against it, never against
    numbers in the file."""
    from specmemo_plan.plan import validate

    return validate(plan, target, draft).split.total.as_dict()


# ----------------------------------------------------------------------------- the device


def _same_name(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def _torch_device(plan: Plan, requested: str | None) -> torch.device:
    kind = plan.device.kind
    if not requested:
        return torch.device("cpu") if kind == "cpu" else torch.device("cuda", 0)
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise SpecMemoError(f"--device {requested!r} is not a torch device", "give cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise SpecMemoError(f"--device {requested}: the engine runs on cpu or cuda (ROCm included)",
                            "give cpu, cuda or cuda:N")
    actual = "cpu" if device.type == "cpu" else ("rocm" if torch.version.hip else "cuda")
    if actual != kind:
        raise refuse("device.kind", f"the plan is for {kind}, --device asks for {requested}", f"make a plan for {actual}")
    return device


def _cpu_identity(plan: Plan) -> tuple[int, int | None]:
    """Refuse a CPU plan made for another machine; (this machine's RAM, bytes free now or None).
    The plan's device name must be this CPU's (specmemo_plan.hardware.probe); a plan for the generic
    CPU profile names no machine and is checked by its memory alone."""
    from specmemo_plan.hardware import probe

    devices, _ = probe.probe_devices(use_torch=False)
    cpu = devices[-1]  # the probe lists the CPU last
    generic = plan.device.profile == GENERIC_CPU_PROFILE and _generic_cpu_name(plan.device.name)
    if not generic and not _same_name(plan.device.name, cpu.name):
        raise refuse("device.name", f"the plan was made for {plan.device.name!r}, this CPU is {cpu.name!r}",
                     "make a plan on this machine (specmemo-plan plan, or tune)")
    return cpu.total_memory_bytes, cpu.free_memory_bytes


def _generic_cpu_name(name: str) -> bool:
    from specmemo_plan.hardware import load_profile

    return _same_name(name, load_profile(GENERIC_CPU_PROFILE).name)


def _gpu_identity(plan: Plan, device: torch.device) -> tuple[int, int | None]:
    kind = plan.device.kind
    if not torch.cuda.is_available():
        raise refuse("device.kind", f"the plan is for {kind}, this machine has no {kind.upper()} device visible to torch",
                     "run on the machine the plan was made for, or make a plan for cpu")
    backend = "rocm" if torch.version.hip else "cuda"
    if backend != kind:
        raise refuse("device.kind", f"the plan is for {kind}, this torch build runs {backend}", f"make a plan for {backend}")
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise SpecMemoError(f"--device {device}: torch sees {torch.cuda.device_count()} {backend.upper()} device(s)",
                            "give cuda:N with N below that")
    name = torch.cuda.get_device_name(device)
    if not _same_name(name, plan.device.name):
        raise refuse("device.name", f"the plan was made for {plan.device.name!r}, this device is {name!r}",
                     "make a plan on this device (specmemo-plan tune) or for its profile")
    free, total = torch.cuda.mem_get_info(device)
    return total, free


def resolve_device(plan: Plan, requested: str | None, need_bytes: int | None = None) -> torch.device:
    """The torch device for the plan's device kind; refuses a machine that does not match the plan.

    On every kind: the device's identity (name, or the generic CPU profile), the plan's budget against the
    device's total memory, and `need_bytes` (what the engine is about to allocate; None: not checked)
    against the memory free now. The CPU's total and free memory are the probe's: MemTotal and
    MemAvailable from /proc/meminfo, or the memory cgroup's limit and room when lower."""
    device = _torch_device(plan, requested)
    total, free = _cpu_identity(plan) if plan.device.kind == "cpu" else _gpu_identity(plan, device)
    what = "this machine's RAM" if plan.device.kind == "cpu" else "this device's memory"
    if total and plan.budget_bytes > total:
        raise refuse("budget_bytes", f"the plan's budget of {format_bytes(plan.budget_bytes)} exceeds {what} of "
                     f"{format_bytes(total)}", "make a plan with a budget this device has")
    if need_bytes is not None and free is not None and need_bytes > free:
        raise refuse("prediction.memory.total_bytes",
                     f"the plan needs {format_bytes(need_bytes)} more, {what} has {format_bytes(free)} free now",
                     "free memory (other processes), or make a plan with a smaller budget")
    return device
