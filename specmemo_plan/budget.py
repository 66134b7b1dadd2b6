"""Questions asked of a memory budget.

- `min_budget`: the smallest total memory at which some k >= 1 still predicts a speedup over plain
  decoding (or keeps a share of the best SD throughput), and that k.
- `largest_batch`, `largest_context`, `largest_draft_length`: one knob at its largest with the
  others fixed.

Kept apart from memory.py because it needs both the memory model and the throughput model.
Every search relies on memory being monotone in batch, context and k (property-tested).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import SpecMemoError
from .memory import Knobs, MemoryBreakdown, breakdown
from .models import ModelShape
from .throughput import MAX_DRAFT_LENGTH, LatencyModel, SpeedPrediction, predict_speed
from .units import format_bytes


@dataclass(frozen=True)
class MinBudget:
    total_bytes: int  # smallest budget at which SD still pays
    draft_length: int  # the k that achieves it
    speed: SpeedPrediction  # predicted at that k
    memory: MemoryBreakdown  # its breakdown
    plain_total_bytes: int  # plain decoding with the same batch and context, for comparison


def min_budget(
    target: ModelShape,
    draft: ModelShape,
    knobs: Knobs,
    latency: LatencyModel,
    retain: float | None = None,
    k_max: int = MAX_DRAFT_LENGTH,
    device_overhead_bytes: int = 0,
    **speed_kwargs,
) -> MinBudget:
    """Smallest total over k in 1..k_max of memory(k), among the k that pay off.

    'Pays off' is a predicted speedup > 1 over plain decoding, or, with `retain`, tokens/s of at
    least retain * the best k's (the paper's 96% trade-off). Memory grows with k, so this is the
    smallest such k's total; one byte less admits no paying k.
    """
    if retain is not None and not 0 < retain <= 1:
        raise SpecMemoError(f"retain must be within (0, 1], got {retain}")
    options = []
    for k in range(1, k_max + 1):
        k_knobs = replace(knobs, draft_length=k)
        speed = predict_speed(target, draft, k_knobs, latency, **speed_kwargs)
        options.append((k, speed, breakdown(target, draft, k_knobs, device_overhead_bytes)))
    best_speed = max(speed.tokens_per_s for _, speed, _ in options)
    paying = [
        o for o in options
        if (o[1].speedup > 1.0 if retain is None else o[1].tokens_per_s >= retain * best_speed and o[1].speedup > 1.0)
    ]
    if not paying:
        best = max(options, key=lambda o: o[1].speedup)
        raise SpecMemoError(
            f"speculative decoding does not pay here: the best predicted speedup is {best[1].speedup:.2f}x (k={best[0]})",
            "plain decoding is faster; a better-matched draft or a higher acceptance would change that",
        )
    k, speed, memory = min(paying, key=lambda o: (o[2].total_bytes, o[0]))
    plain = breakdown(target, None, replace(knobs, draft_length=0, draft_weight_dtype=None), device_overhead_bytes)
    return MinBudget(memory.total_bytes, k, speed, memory, plain.total_bytes)


def fits(target, draft, knobs, budget_bytes: int, device_overhead_bytes: int = 0) -> bool:
    return breakdown(target, draft, knobs, device_overhead_bytes).total_bytes <= budget_bytes


def _largest(fit_at, low: int, high: int) -> int | None:
    """Largest n in [low, high] with fit_at(n) true, for a monotone predicate; None if even low fails."""
    if not fit_at(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fit_at(mid) else (low, mid - 1)
    return low


def check_weights_fit(target, draft, knobs, budget_bytes: int, device_overhead_bytes: int = 0) -> None:
    """A clear error when the budget cannot even hold the weights (and runtime overhead)."""
    b = breakdown(target, draft, replace(knobs, batch_size=1, max_context=1), device_overhead_bytes)
    floor = b.weights_bytes + b.components["runtime_overhead"]
    if floor > budget_bytes:
        raise SpecMemoError(
            f"the budget {format_bytes(budget_bytes)} is below the weights alone ({format_bytes(floor)}) "
            f"by {format_bytes(floor - budget_bytes)}",
            "raise --budget, use a smaller --dtype (int8, int4), or a smaller model",
        )


def largest_batch(target, draft, knobs, budget_bytes, max_batch: int = 4096, device_overhead_bytes: int = 0) -> int | None:
    return _largest(
        lambda b: fits(target, draft, replace(knobs, batch_size=b), budget_bytes, device_overhead_bytes), 1, max_batch
    )


def context_limit(target: ModelShape, draft: ModelShape | None) -> int:
    """The target's max_position_embeddings. A draft trained for fewer positions still runs past
    them (RoPE extrapolates), only with lower acceptance, so it does not cap the context."""
    return target.max_position_embeddings


def largest_context(target, draft, knobs, budget_bytes, device_overhead_bytes: int = 0) -> int | None:
    """Up to `context_limit`: a longer context would exceed what the target was trained for."""
    limit = context_limit(target, draft)
    return _largest(
        lambda c: fits(target, draft, replace(knobs, max_context=c), budget_bytes, device_overhead_bytes), 1, limit
    )


K_SEARCH_LIMIT = 64  # draft lengths past this accept nothing more at any realistic acceptance (a^64)


def largest_draft_length(target, draft, knobs, budget_bytes, k_max: int = K_SEARCH_LIMIT, device_overhead_bytes: int = 0) -> int | None:
    if draft is None:
        return None
    return _largest(
        lambda k: fits(target, draft, replace(knobs, draft_length=k), budget_bytes, device_overhead_bytes), 1, k_max
    )
