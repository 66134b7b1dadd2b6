"""What the engine will print at startup for the exported settings, by the engines' own memory models
(specmemo_plan/engines), beside the settings: vLLM's "GPU KV cache size" and "Maximum concurrency", SGLang's
pool, llama.cpp's buffer sizes. Said as a prediction of a named model version, never as the engine's output.

The same prediction is the export's last check: settings whose predicted peak passes the plan's budget, or
that the engine would not start, are refused (engine_share.refuse_over_budget), never written.
"""

from __future__ import annotations

from dataclasses import replace

from ..engines import EngineOptions, startup_log
from ..errors import SpecMemoError
from ..plan import Plan
from .engine_share import EngineCheck, engine_check, plan_context, refuse_over_budget, settings_options
from .facts import ExportResult


def engine_options_for(result: ExportResult, plan: Plan) -> EngineOptions:
    """The engine flags an export wrote, as EngineOptions (plan --engine predicts with these too)."""
    return settings_options(result.engine, result.settings, plan_context(plan), plan.device.name)


def with_startup(result: ExportResult, plan: Plan, check: EngineCheck | str | None = None) -> ExportResult:
    """`result` with the engine's predicted startup lines in its notes, or a SpecMemoError when by the engine's
    accounting its settings pass the plan's budget or would not start. Plans the engine models do not reach
    (engine_share.engine_check) are left as they are."""
    if check is None:
        check = engine_check(plan, result.engine)
    if not isinstance(check, EngineCheck):
        return result
    try:
        memory = check.memory(result.settings)
    except SpecMemoError as exc:  # a setting the model cannot size: say so, keep the export
        return replace(result, notes=result.notes + [f"predicted startup: not modelled ({exc.message})"])
    refuse_over_budget(result.engine, memory, check, result.settings)
    lines = [f"predicted {memory.version} startup: {line}" for line in startup_log(memory)]
    return replace(result, predicted_startup=tuple(lines), notes=result.notes + lines)
