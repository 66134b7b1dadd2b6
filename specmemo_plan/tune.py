"""From a measured profile to a plan: search the knobs, build the plan and the notes that explain it.

Pure arithmetic over what `profile` measured (autotune.search over the fitted curves and the
acceptance histogram); the measuring and the verify run are the engine's (engine/workflow.py),
so this module imports neither torch nor the engine.

Two rules keep the notes honest:
- the search stays inside what was measured: batches up to the largest profiled batch (a note
  says so when more were asked for), and a note when the context runs past the profiled ones;
- every note describes the plan that was written: SD's minimum budget is computed at the plan's
  batch and says so, and "planning plain decoding" appears only when the plan is plain decoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from .autotune import MeasuredProfile, SearchResult, search
from .budget import min_budget
from .errors import SpecMemoError
from .memory import Knobs, breakdown, plain_knobs
from .models import ModelShape, load_shape
from .plan import DeviceSpec, Generation, Plan, make_plan
from .quantities import acceptance_rate
from .units import format_bytes


@dataclass(frozen=True)
class TuneReport:
    result: SearchResult
    notes: list[str]
    min_budget_bytes: int | None  # SD's minimum budget at `min_budget_batch`; None without a paying k
    min_budget_batch: int  # the written plan's batch
    max_batch: int  # the largest batch searched (the largest measured, at most)
    search_seconds: float


def measured_batch(measured: MeasuredProfile) -> int:
    """The largest batch the latency grid measured: beyond it the fit would extrapolate."""
    return max(s["batch"] for s in measured.samples if s["model"] == "target")


def measured_context(measured: MeasuredProfile) -> int:
    """The longest context (cached tokens) the latency grid measured."""
    return max(s["context"] for s in measured.samples if s["model"] == "target")


def _range_notes(measured: MeasuredProfile, max_batch: int, context: int) -> tuple[int, list[str]]:
    """(the batch bound to search, notes on what lies outside the measured range)."""
    largest, notes = measured_batch(measured), []
    if max_batch > largest:
        notes.append(f"the search stops at batch {largest}, the largest the profile measured (asked for up to "
                     f"{max_batch}); profile with --max-batch {max_batch} to search further")
    longest = measured_context(measured)
    if context > longest:
        notes.append(f"the context {context} runs past the longest profiled one ({longest} cached tokens): the fit's "
                     "context terms are linear in it, so latency there is that line extended, not measured; "
                     f"`specmemo-plan profile --context {context}` measures it")
    return min(max_batch, largest), notes


def _check_models(measured: MeasuredProfile) -> tuple[ModelShape, ModelShape | None]:
    target = load_shape(measured.target["ref"])
    draft = load_shape(measured.draft["ref"]) if measured.draft else None
    for role, shape, ref in (("target", target, measured.target), ("draft", draft, measured.draft)):
        if shape is not None and shape.fingerprint != ref["fingerprint"]:
            raise SpecMemoError(f"the measured profile's {role} is not {ref['ref']} any more", "run `specmemo-plan profile` again")
    return target, draft


def _search(target, draft, base: Knobs, budget: int, measured: MeasuredProfile, **kwargs) -> SearchResult:
    try:
        return search(target, draft, base, budget, measured.latency(), histogram=measured.acceptance_histogram,
                      device_overhead_bytes=measured.runtime_overhead_bytes, **kwargs)
    except SpecMemoError:
        need = breakdown(target, None, plain_knobs(base), measured.runtime_overhead_bytes).total_bytes
        raise SpecMemoError(
            f"the budget {format_bytes(budget)} is below the minimum: plain decoding at batch 1 needs {format_bytes(need)}",
            f"raise --budget to at least {need} bytes, or shorten --context",
        ) from None


def _plan_notes(target, draft, chosen, result: SearchResult, budget: int, measured: MeasuredProfile,
                k_max: int) -> tuple[int | None, list[str]]:
    """(SD's minimum budget at the plan's batch, notes on why the plan does or does not draft).

    The minimum is computed at the batch of the written plan, not at batch 1: SD can lose at
    batch 1 and win at 4 (or the other way round), and a note must not judge another plan."""
    if draft is None:
        return None, []
    batch, use_draft = chosen.knobs.batch_size, chosen.knobs.draft_length > 0
    at = replace(chosen.knobs, draft_length=1)  # min_budget tries every k from 1 at the plan's batch
    histogram = measured.acceptance_histogram
    plain = "" if use_draft else ": planning plain decoding"
    try:
        mb = min_budget(target, draft, at, measured.latency(), k_max=k_max, histogram=histogram,
                        device_overhead_bytes=measured.runtime_overhead_bytes)
    except SpecMemoError as exc:
        return None, [f"{exc.message} at batch {batch}, the plan's{plain}"]
    if budget < mb.total_bytes:
        return mb.total_bytes, [f"the budget {format_bytes(budget)} is below SD's minimum of {format_bytes(mb.total_bytes)} "
                                f"at batch {batch}, the plan's (k={mb.draft_length}){plain}"]
    best = result.best_draft
    if use_draft or best is None:
        return mb.total_bytes, []
    # SD pays against plain decoding at this batch, yet plain decoding at a larger batch is faster
    a = acceptance_rate(histogram) if histogram else None
    return mb.total_bytes, [
        f"speculative decoding does not pay within this budget: the best draft configuration "
        f"(k={best.knobs.draft_length}, batch {best.knobs.batch_size}) predicts {best.tokens_per_s:,.1f} "
        f"tokens/s, plain decoding at batch {batch} {chosen.tokens_per_s:,.1f}"
        + (f" (acceptance {a:.3f})" if a is not None else "") + plain]


def _k_limit_note(k: int, k_max: int, histogram) -> list[str]:
    """A plan whose k is the largest searched says so: the optimum may lie past the limit."""
    limit = min(k_max, len(histogram) - 1) if histogram else k_max
    if k == 0 or k < limit:
        return []
    return [f"k={k} is the largest draft length searched (--k-max and the acceptance histogram stop at {limit}): "
            "a longer draft may be faster; profile with a larger --k-max to see"]


def tune(measured: MeasuredProfile, budget_bytes: int | None, context: int, max_new_tokens: int = 256,
         retain: float | None = None, k_max: int = 8, max_batch: int = 16,
         kv_dtype: str | None = None) -> tuple[Plan, TuneReport]:
    """The plan with the highest predicted throughput inside the budget (or the smallest memory
    keeping `retain` of it), from the measured curves and acceptance, with the notes that explain it."""
    target, draft = _check_models(measured)
    device = DeviceSpec(**{k: v for k, v in measured.device.items() if k in DeviceSpec.__dataclass_fields__})
    budget = budget_bytes or device.total_memory_bytes
    if budget > device.total_memory_bytes:
        raise SpecMemoError(f"the budget {format_bytes(budget)} exceeds the profiled device's "
                            f"{format_bytes(device.total_memory_bytes)} ({device.name})",
                            "give a --budget the device has, or leave it out for the whole device")
    if context > target.max_position_embeddings:
        raise SpecMemoError(f"context {context} exceeds the target's {target.max_position_embeddings} positions",
                            f"use --context {target.max_position_embeddings} or less")
    base = Knobs(batch_size=1, max_context=context, draft_length=1 if draft else 0,
                 weight_dtype=measured.target["dtype"], kv_dtype=kv_dtype)
    searched_batch, notes = _range_notes(measured, max_batch, context)
    new_tokens = min(max_new_tokens, context - 1)  # make_plan's rule: room for at least one prompt token
    if new_tokens < max_new_tokens:
        notes = notes + [f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in a context of {context}: "
                         f"the plan generates at most {new_tokens} new tokens"]
    t0 = time.perf_counter()
    result = _search(target, draft, base, budget, measured, k_max=k_max, max_batch=searched_batch, retain=retain,
                     new_tokens=new_tokens)
    search_s = time.perf_counter() - t0
    chosen = result.chosen
    minimum, plan_notes = _plan_notes(target, draft, chosen, result, budget, measured, k_max)
    notes = plan_notes + notes + _k_limit_note(chosen.knobs.draft_length, k_max, measured.acceptance_histogram)
    use_draft = chosen.knobs.draft_length > 0
    histogram = measured.acceptance_histogram
    latency = measured.latency()
    plan = make_plan(
        measured.target["ref"], target, measured.draft["ref"] if use_draft else None, draft if use_draft else None,
        chosen.knobs, device, budget, generation=Generation(max_new_tokens=new_tokens),
        device_overhead_bytes=measured.runtime_overhead_bytes,
        throughput=dict(chosen.speed.plan_fields(latency.source, measured.acceptance_source),
                        acceptance_rate=acceptance_rate(histogram) if use_draft and histogram else None),
        provenance={
            "command": "specmemo-plan tune", "method": "measured latency fit + exhaustive search",
            "search": {"evaluated": result.evaluated, "seconds": search_s, "retain": retain,
                       "max_batch": searched_batch, "fastest": result.fastest.as_dict(), "chosen": chosen.as_dict(),
                       "plain": result.plain.as_dict() if result.plain else None,
                       "frontier": [c.as_dict() for c in result.frontier]},
            "fit": {"target": measured.target_fit, "draft": measured.draft_fit},
            "min_budget_bytes": minimum, "min_budget_batch": chosen.knobs.batch_size, "notes": notes,
        },
    )
    return plan, TuneReport(result, notes, minimum, chosen.knobs.batch_size, searched_batch, search_s)
