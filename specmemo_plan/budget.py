"""Questions asked of a memory budget, on N devices (one device is N = 1).

- `min_budget`: the smallest budget per device at which some k >= 1 still predicts a speedup over
  plain decoding (or keeps a share of the best SD throughput), and that k;
- `largest`: one knob (batch, context or k) at its largest with the others fixed;
- `check_weights_fit`: a clear error when the budget cannot hold even the weights.

Kept apart from memory.py because it needs the memory model, the placement and the throughput model.
Every search relies on memory being monotone in batch, context and k (property-tested).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from .errors import SpecMemoError
from .memory import Knobs, MemoryBreakdown, breakdown, plain_knobs
from .models import ModelShape
from .placement import DEFAULT_POLICY, DeviceSplit, fits, split_layers
from .throughput import MAX_DRAFT_LENGTH, LatencyModel, SpeedPrediction, predict_speed
from .units import format_bytes

# Largest batch `largest` searches: past it, the step's rows are far beyond what a small device serves.
MAX_BATCH_SEARCH = 4096


@dataclass(frozen=True)
class MinBudget:
    total_bytes: int  # per device: the smallest budget at which SD still pays
    draft_length: int  # the k that achieves it
    speed: SpeedPrediction  # predicted at that k
    split: DeviceSplit  # the plan placed at that budget (one device: everything on device 0)
    plain_total_bytes: int  # plain decoding with the same batch and context, all devices together
    tree: object = None  # drafting.trees.TreeShape at that budget (a chain: depth k, top-k 1)

    @property
    def memory(self) -> MemoryBreakdown:
        """All devices together (one device: memory.breakdown)."""
        return self.split.total


def need_per_device(target, draft, knobs, devices: int = 1, overhead: int = 0) -> int:
    """The smallest budget, the same on every device, that holds the plan: the total on one device;
    over N devices the boundary of the layer walk, found by bisection (memory is monotone in the cap)."""
    total = breakdown(target, draft, knobs, overhead).total_bytes
    if devices == 1:
        return total
    low, high = 1, total  # one device of the one-device total always suffices
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(target, draft, knobs, [mid] * devices, overhead) else (mid + 1, high)
    return low


def min_budget(
    target: ModelShape,
    draft: ModelShape,
    knobs: Knobs,
    latency: LatencyModel,
    retain: float | None = None,
    k_max: int = MAX_DRAFT_LENGTH,
    device_overhead_bytes: int = 0,
    devices: int = 1,
    interconnect_gbps: float | None = None,
    policy: str = DEFAULT_POLICY,
    draft_lengths: Sequence[int] | None = None,
    shapes: Sequence | None = None,
    **speed_kwargs,
) -> MinBudget:
    """Smallest per-device budget over k in `draft_lengths` (default 1..k_max), among the k that pay off.

    'Pays off' is a predicted speedup > 1 over plain decoding, or, with `retain`, tokens/s of at
    least retain * the best k's (the paper's 96% trade-off). Memory grows with k, so this is the
    smallest such k's budget; one byte less admits no paying k. `draft_lengths=(8,)` asks about
    k = 8 alone (`min-budget -k 8`). `shapes` (drafting.trees.TreeShape) replaces both: tune's runtime_shapes.
    """
    if retain is not None and not 0 < retain <= 1:
        raise SpecMemoError(f"retain must be within (0, 1], got {retain}")
    shapes = list(shapes) if shapes is not None else search_shapes(target, draft, knobs, k_max, draft_lengths)
    options = []
    for tree in shapes:
        k, kk = tree.tokens, knobs.with_tree(tree)
        need = need_per_device(target, draft, kk, devices, device_overhead_bytes)
        split = split_layers(target, draft, kk, [need] * devices, device_overhead_bytes, policy)
        speed = predict_speed(target, draft, kk, latency, split=split, interconnect_gbps=interconnect_gbps,
                              **speed_kwargs)
        options.append((need, k, split, speed, tree))
    best_speed = max(o[3].tokens_per_s for o in options)
    paying = [o for o in options if o[3].speedup > 1.0 and (retain is None or o[3].tokens_per_s >= retain * best_speed)]
    if not paying:
        top = max(options, key=lambda o: o[3].speedup)
        which = f"at {top[4].label}" if len(options) == 1 else \
            f"the best predicted speedup is {top[3].speedup:.2f}x ({top[4].label})"
        if len(options) == 1:
            which += f" the predicted speedup is {top[3].speedup:.2f}x"
        hint = "plain decoding is faster; a better-matched draft or a higher acceptance would change that"
        if len(options) == 1 and k_max > 1:
            hint += "; omit -k to search every k"
        raise SpecMemoError(f"speculative decoding does not pay here: {which}", hint)
    need, k, split, speed, tree = min(paying, key=lambda o: (o[0], o[1]))
    return MinBudget(need, k, speed, split, _plain_total(target, knobs, devices, device_overhead_bytes, policy), tree)


def search_shapes(target, draft, knobs, k_max: int, draft_lengths: Sequence[int] | None = None) -> list:
    """The (depth, top-k, T) shapes min_budget tries: the given draft lengths as chains (-k: that k alone,
    or that T with the knobs' tree); else chains of 1..k_max and, where the method drafts trees, the tree
    grid of drafting.trees.search_shapes (Medusa: depth at most its number of heads)."""
    from .drafting import trees
    from .drafting.methods import get_method

    method = knobs.method(draft is not None)
    if draft_lengths is not None:
        draft_lengths = tuple(draft_lengths)
        if not draft_lengths or min(draft_lengths) < 1:
            raise SpecMemoError(f"min_budget needs draft lengths of at least 1, got {draft_lengths}",
                                "give -k 1 or more (k = 0 is plain decoding)")
        if knobs.tree_topk not in (None, 1) or knobs.tree_depth is not None:
            return [trees.TreeShape(knobs.tree_depth or k, knobs.tree_topk or 1, k) for k in draft_lengths]
        return [trees.TreeShape(k, 1, k) for k in draft_lengths]
    max_depth = trees.MAX_TREE_DEPTH
    if method == "medusa":
        heads = len(draft.layer_params)
        max_depth, k_max = min(max_depth, heads), min(k_max, heads)
    return trees.search_shapes(get_method(method).trees, k_max, max_depth)


def _plain_total(target, knobs, devices, overhead, policy) -> int:
    """Plain decoding with the same batch and context at its own smallest budget, all devices together."""
    plain = plain_knobs(knobs)
    need = need_per_device(target, None, plain, devices, overhead)
    return split_layers(target, None, plain, [need] * devices, overhead, policy).total.total_bytes


def _largest(fit_at, low: int, high: int) -> int | None:
    """Largest n in [low, high] with fit_at(n) true, for a monotone predicate; None if even low fails."""
    if not fit_at(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fit_at(mid) else (low, mid - 1)
    return low


KNOB_LIMITS = ("batch_size", "max_context", "draft_length")


def knob_limit(knob: str, target: ModelShape) -> int:
    """How far `largest` searches each knob: MAX_BATCH_SEARCH rows; the target's trained positions
    (a draft trained for fewer still runs past them, RoPE extrapolates, only with lower acceptance);
    MAX_DRAFT_LENGTH drafts."""
    return {"batch_size": MAX_BATCH_SEARCH, "max_context": target.max_position_embeddings,
            "draft_length": MAX_DRAFT_LENGTH}[knob]


def largest(knob: str, target, draft, knobs, budget_bytes: int, overhead: int = 0, devices: int = 1) -> int | None:
    """Largest batch_size, max_context or draft_length (the others fixed) that fits `devices` x budget."""
    if knob not in KNOB_LIMITS:
        raise SpecMemoError(f"unknown knob {knob!r}", "one of: " + ", ".join(KNOB_LIMITS))
    if knob == "draft_length" and knobs.method(draft is not None) in ("none", "draft-model") and draft is None:
        return None
    budgets = [budget_bytes] * devices
    return _largest(lambda v: fits(target, draft, replace(knobs, **{knob: v}), budgets, overhead), 1,
                    knob_limit(knob, target))


def check_weights_fit(target, draft, knobs, budget_bytes: int, device_overhead_bytes: int = 0, devices: int = 1) -> None:
    """A clear error when the budget cannot even hold the weights and each device's runtime overhead
    (over N devices: in whole decoder layers, with each device's overhead and activation peak)."""
    b = breakdown(target, draft, replace(knobs, batch_size=1, max_context=1), device_overhead_bytes)
    floor = b.weights_bytes + b.components["runtime_overhead"]
    if devices == 1 and floor > budget_bytes:
        raise SpecMemoError(
            f"the budget {format_bytes(budget_bytes)} is below the weights alone ({format_bytes(floor)}) "
            f"by {format_bytes(floor - budget_bytes)}",
            "raise --budget, use a smaller --dtype (int8, int4), or a smaller model",
        )
    smallest = replace(knobs, batch_size=1, max_context=1)
    if devices > 1 and not fits(target, draft, smallest, [budget_bytes] * devices, device_overhead_bytes):
        raise SpecMemoError(
            f"{devices} x {format_bytes(budget_bytes)} cannot hold the weights, in whole decoder layers, with each "
            "device's runtime overhead",
            "raise --budget or --devices, or use a smaller --dtype (int8, int4)",
        )


def largest_tree_tokens(target, draft, knobs, budget_bytes: int, overhead: int = 0, devices: int = 1) -> int | None:
    """Largest T the knobs' tree (its depth and top-k fixed) verifies within the budget: from its depth up
    to min(tree capacity, drafting.trees.MAX_TREE_TOKENS); memory grows with T, so bisect."""
    from .drafting.trees import MAX_TREE_TOKENS, tree_capacity

    tree = knobs.tree
    high = min(tree_capacity(tree.depth, tree.topk), MAX_TREE_TOKENS)
    budgets = [budget_bytes] * devices
    return _largest(lambda t: fits(target, draft, replace(knobs, draft_length=t), budgets, overhead), tree.depth, high)
