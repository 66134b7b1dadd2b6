"""What the engine will print at startup for the exported settings, by the engines' own memory models
(specmemo_plan/engines), beside the settings: vLLM's "GPU KV cache size" and "Maximum concurrency",
llama.cpp's buffer sizes. Said as a prediction of a named model version, never as the engine's output."""

from __future__ import annotations

from dataclasses import replace

from ..engines import EngineOptions, engine_fits, engine_memory, startup_log
from ..errors import SpecMemoError
from ..models import load_shape
from ..plan import Plan
from .facts import ExportResult

# export name -> engines registry name, and the settings the export wrote that the engine model reads
_MODELLED = {"vllm": "vllm", "llama.cpp": "llama.cpp"}


def engine_options_for(result: ExportResult, plan: Plan) -> EngineOptions:
    """The engine flags an export wrote, as EngineOptions (plan --engine predicts with these too)."""
    s = result.settings
    overhead = plan.per_device[0].memory.components["runtime_overhead"] if plan.per_device else 0
    common = dict(cuda_context_bytes=overhead or None, device_name=plan.device.name)
    if result.engine == "vllm":
        return EngineOptions(gpu_memory_utilization=s.get("gpu_memory_utilization"),
                             max_num_seqs=s.get("max_num_seqs"), max_model_len=s.get("max_model_len"),
                             max_num_batched_tokens=s.get("max_num_batched_tokens"), **common)
    return EngineOptions(ctx_size=s.get("ctx_size"), ubatch_size=s.get("ubatch_size"), parallel=s.get("parallel"),
                         flash_attn=s.get("flash_attn"), cache_type_k=s.get("cache_type_k"),
                         cache_type_v=s.get("cache_type_v"), **common)


def with_startup(result: ExportResult, plan: Plan) -> ExportResult:
    """`result` with the engine's predicted startup lines in its notes (and a warning in `unsupported` when the
    model predicts the engine will not start, or will hold fewer sequences than the plan's batch). Plans on one
    device of a kind the engine runs; other cases are left as they are, said in a note."""
    engine = _MODELLED.get(result.engine)
    if engine is None or plan.device.count > 1 or plan.device.kind == "cpu" or plan.draft is not None \
            and plan.knobs.method(True) != "draft-model":
        return result
    try:
        target = load_shape(plan.target.ref)
        draft = load_shape(plan.draft.ref) if plan.draft else None
        memory = engine_memory(engine, target, draft, plan.knobs, engine_options_for(result, plan),
                               device_total_bytes=plan.device.total_memory_bytes)
    except SpecMemoError as exc:  # a setting the model cannot size: say so, keep the export
        return replace(result, notes=result.notes + [f"predicted startup: not modelled ({exc.message})"])
    lines = [f"predicted {memory.version} startup: {line}" for line in startup_log(memory)]
    refusal = engine_fits(memory, plan.knobs)
    unsupported = result.unsupported + ([f"WARNING: by {memory.version}'s accounting these settings do not start "
                                         f"the plan: {refusal}"] if refusal else [])
    return replace(result, predicted_startup=tuple(lines), notes=result.notes + lines, unsupported=unsupported)
