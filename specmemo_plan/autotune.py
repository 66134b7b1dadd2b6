"""The autotuner's arithmetic: fit a latency model to measurements, then search the knobs.

Measuring (timing forward passes, the acceptance histogram) needs torch and lives in
`engine/profiling.py`; this module only reads its samples, so it stays importable without torch.

Latency model per model, fitted with scipy (non-negative least squares on relative error):
    t(B, n, S) = c0 + g(B*n) + c2 * B*S + c3 * B*n*S        [ms]
c0 is the per-forward floor (reading the weights, launching kernels), g the work of the layers and
output layer on the B*n rows of the forward, c2 reading the KV cache of S cached tokens per
sequence, c3 the attention of n new tokens over S: the roofline's bytes and FLOPs terms.
g is piecewise linear with a knot at every measured B*n and non-negative slopes (ramp basis in
the same NNLS), because matrix kernels are not linear in their row count: on a 2-core CPU, 4 rows
cost ~1.5x what 3 rows cost (README, "Where speculative decoding can pay"). With knots=() g is linear, c1 * B*n.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

from .errors import SpecMemoError
from .memory import Knobs, MemoryBreakdown, breakdown, plain_knobs
from .models import ModelShape
from .throughput import DEFAULT_ACCEPTANCE, MAX_DRAFT_LENGTH, SpeedPrediction, predict_speed

MEASURED_PROFILE_VERSION = 1
SEARCH_CHUNKS = (64, 128, 256, 512, 1024, 2048)  # prefill chunks the search tries (capped at the context)


@dataclass(frozen=True)
class LatencySample:
    model: str  # "target" or "draft"
    batch: int
    num_tokens: int  # new tokens per sequence in the forward
    context: int  # cached tokens per sequence before it
    ms: float  # median wall time


def _features(batch: int, num_tokens: int, context: int, knots: Sequence[int] = ()) -> list[float]:
    """[1, g's basis at B*n ..., B*S, B*n*S]. With knots x_0 < ... < x_m, g's basis is one ramp per
    segment, min(max(x - x_(i-1), 0), x_i - x_(i-1)), the last one unbounded (extrapolates its slope)."""
    x = batch * num_tokens
    if not knots:
        rows = [float(x)]
    else:
        rows = [min(max(x - lo, 0.0), hi - lo) for lo, hi in zip(knots, knots[1:])]
        rows[-1] = max(x - knots[-2], 0.0)
    return [1.0, *rows, batch * context, batch * num_tokens * context]


@dataclass(frozen=True)
class LatencyFit:
    coefficients: tuple[float, ...]  # ms, for _features: c0, g's slopes (or c1), c2, c3
    mean_abs_pct_error: float  # on the samples it was fitted to
    max_abs_pct_error: float
    num_samples: int
    knots: tuple[int, ...] = ()  # g's knots (measured B*n); () = linear in B*n

    def ms(self, batch: int, num_tokens: int, context: int) -> float:
        return sum(c * f for c, f in zip(self.coefficients, _features(batch, num_tokens, context, self.knots)))

    def g_ms(self, rows: int) -> float:
        """g at B*n = rows: the row-dependent work, without the floor and the context terms."""
        return sum(c * f for c, f in zip(self.coefficients[1:-2], _features(1, rows, 0, self.knots)[1:-2]))

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyFit":
        return cls(**{**data, "coefficients": tuple(data["coefficients"]), "knots": tuple(data.get("knots", ()))})


def fit_latency(samples: Sequence[LatencySample], piecewise: bool = True) -> LatencyFit:
    """Non-negative least squares on relative error (scipy.optimize.nnls): every coefficient is a
    cost, so none may be negative, and short forwards matter as much as long ones. `piecewise`:
    g(B*n) with a knot at each measured B*n, where the samples are enough (at least two per
    coefficient and three distinct B*n); otherwise linear."""
    import numpy as np
    from scipy.optimize import nnls

    knots: tuple[int, ...] = ()
    distinct = sorted({s.batch * s.num_tokens for s in samples})
    if piecewise and len(distinct) >= 3 and len(samples) >= 2 * (len(distinct) + 2):
        knots = tuple(distinct)
    width = len(_features(1, 1, 0, knots))
    if len(samples) < width:
        raise SpecMemoError(f"{len(samples)} latency samples cannot fit {width} coefficients", "profile a larger grid")
    X = np.array([_features(s.batch, s.num_tokens, s.context, knots) for s in samples], dtype=float)
    y = np.array([s.ms for s in samples], dtype=float)
    if np.any(y <= 0):
        raise SpecMemoError("latency samples must be positive")
    scale = X.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls((X / scale) / y[:, None], np.ones_like(y))
    coef = coef / scale
    pct = np.abs(X @ coef - y) / y * 100
    return LatencyFit(tuple(float(c) for c in coef), float(pct.mean()), float(pct.max()), len(samples), knots)


@dataclass(frozen=True)
class FittedLatency:
    """The throughput module's latency interface over fitted curves, one per model role."""

    target: LatencyFit
    draft: LatencyFit | None
    target_fingerprint: str
    draft_fingerprint: str | None
    name: str = "measured"

    @property
    def source(self) -> str:
        return f"measured:{self.name}"

    def forward_ms(self, model: ModelShape, dtype, batch, num_tokens, context) -> float:
        if model.fingerprint == self.target_fingerprint:
            fit = self.target
        elif self.draft is not None and model.fingerprint == self.draft_fingerprint:
            fit = self.draft
        else:
            raise SpecMemoError(f"no measured latency for {model.name}", "run `specmemo-plan profile` for this pair")
        return fit.ms(batch, num_tokens, context)


# ----------------------------------------------------------------------------- measured profile file


@dataclass(frozen=True)
class MeasuredProfile:
    """What `specmemo-plan profile` writes and `tune` / `compare` reuse."""

    device: dict  # kind, name, total_memory_bytes, profile key
    target: dict  # ref, dtype, fingerprint
    draft: dict | None
    samples: list  # LatencySample dicts
    target_fit: dict  # LatencyFit dict
    draft_fit: dict | None
    acceptance_histogram: list | None  # steps (counts or shares) accepting i drafts, i = 0..k_max
    acceptance_source: str  # measured | given | none
    notes: dict = field(default_factory=dict)
    version: int = MEASURED_PROFILE_VERSION
    # the method measured (drafting/methods.py): the drafter is `draft` (a draft model, a head's config, the
    # target for MTP) or nothing (n-gram: no draft forward, only its acceptance histogram). None: draft-model
    # with a draft, none without, as the files written before the field (still version 1) mean
    draft_method: str | None = None
    # a head's or n-gram's depth-1 ranks (engine Stats.rank_histogram: [none, rank 1, ..., rank R]): what a
    # tree's siblings catch (drafting.trees.sibling_shares); None: not measured, the tree model's geometric ranks
    rank_histogram: list | None = None

    def __post_init__(self):
        from .drafting.methods import effective_method

        object.__setattr__(self, "draft_method", effective_method(self.draft_method, self.draft is not None))

    @property
    def head_embedding(self) -> str | None:
        """A head's embedding policy as profiled (the draft's `head_embedding`; None: shared)."""
        return (self.draft or {}).get("head_embedding")

    def shapes(self) -> tuple[ModelShape, ModelShape | None]:
        """(target, drafter) rebuilt from the references as `draft_method` reads them (a head from its config,
        MTP from the target, n-gram: None), refused when they are not what was timed any more."""
        from .drafting.resolve import resolve_draft
        from .models import load_shape

        target = load_shape(self.target["ref"])
        ref = self.draft["ref"] if self.draft else None
        _, drafter, _ = resolve_draft(self.target["ref"], target, ref, self.draft_method, self.head_embedding)
        for role, shape, timed in (("target", target, self.target), ("draft", drafter, self.draft)):
            if shape is not None and shape.fingerprint != timed["fingerprint"]:
                raise SpecMemoError(f"the measured profile's {role} is not {timed['ref']} any more",
                                    "run `specmemo-plan profile` again")
        return target, drafter

    @property
    def runtime_overhead_bytes(self) -> int:
        """The matched hardware profile's runtime overhead (CUDA/HIP context...); 0 on CPU or unmatched."""
        key = self.device.get("profile")
        if not key:
            return 0
        from .hardware import load_profile

        return load_profile(key).runtime_overhead_bytes

    def check_pair(self, target: ModelShape, draft: ModelShape | None) -> None:
        """Refuse models other than the measured ones: the fitted curves belong to that pair."""
        for role, shape, ref in (("target", target, self.target), ("draft", draft, self.draft)):
            if shape is None:
                continue
            if ref is None:
                raise SpecMemoError(f"the measured profile has no draft; {shape.name} was not measured",
                                    "run `specmemo-plan profile` with this --draft")
            if shape.fingerprint != ref["fingerprint"]:
                raise SpecMemoError(f"the measured profile's {role} is {ref['ref']}, not {shape.name}",
                                    "run `specmemo-plan profile` for this pair")

    def widest_forward(self, model: str) -> int:
        """The most new tokens per sequence one timed forward of `model` (target, draft) held; 0 untimed."""
        return max((s["num_tokens"] for s in self.samples if s["model"] == model), default=0)

    def search_shapes(self, k_max: int) -> list:
        """What a search over this profile tries (drafting.trees.runtime_shapes): chains of 1..k_max, and trees
        where the runtime grows them for the method measured, priced inside what was timed: T + 1 up to the
        widest verify, top-k up to the widest draft step (n-gram times no draft forward)."""
        from .drafting.trees import MAX_TREE_TOPK, runtime_shapes

        widest_draft = self.widest_forward("draft") if self.draft_fit else MAX_TREE_TOPK
        return runtime_shapes(self.draft_method, k_max, self.widest_forward("target") - 1, widest_draft)

    def latency(self) -> FittedLatency:
        return FittedLatency(
            target=LatencyFit.from_dict(self.target_fit),
            draft=LatencyFit.from_dict(self.draft_fit) if self.draft_fit else None,
            target_fingerprint=self.target["fingerprint"],
            draft_fingerprint=self.draft["fingerprint"] if self.draft else None,
            name=self.device.get("name", "device"),
        )


def read_measured_profile(path: str | os.PathLike) -> MeasuredProfile:
    """A measured profile file, every field checked (measured_schema): a bad one is one line naming the field."""
    from .files import read_json_file
    from .measured_schema import check_measured

    data = read_json_file(path, "a measured profile", "run `specmemo-plan profile` to write one")
    return MeasuredProfile(**check_measured(data, str(path)))


# ----------------------------------------------------------------------------- search


@dataclass(frozen=True)
class Candidate:
    knobs: Knobs
    speed: SpeedPrediction
    memory: MemoryBreakdown

    @property
    def tokens_per_s(self) -> float:
        return self.speed.tokens_per_s

    @property
    def total_bytes(self) -> int:
        return self.memory.total_bytes

    def as_dict(self) -> dict:
        return {
            "draft_length": self.knobs.draft_length,
            "tree": self.knobs.tree.as_dict() if self.knobs.draft_length else None, "batch_size": self.knobs.batch_size,
            "prefill_chunk": self.knobs.chunk, "tokens_per_s": self.tokens_per_s,
            "speedup": self.speed.speedup, "total_bytes": self.total_bytes,
        }


@dataclass(frozen=True)
class SearchResult:
    fastest: Candidate  # highest predicted tokens/s within the budget
    chosen: Candidate  # fastest, or the smallest memory keeping `retain` of the fastest
    frontier: list  # Candidates: memory vs throughput Pareto curve between the two ends
    evaluated: int  # configurations evaluated
    plain: Candidate | None  # best plain decoding (no draft) within the budget
    best_draft: Candidate | None = None  # best with a draft (k >= 1) within the budget


def _batches(max_batch: int) -> list[int]:
    """Every batch to 16, then powers of two and their midpoints: throughput is smooth in B."""
    values = set(range(1, min(max_batch, 16) + 1))
    b = 16
    while b <= max_batch:
        values.update({b, min(max_batch, b + b // 2)})
        b *= 2
    values.add(max_batch)
    return sorted(v for v in values if v <= max_batch)


def search(
    target: ModelShape,
    draft: ModelShape | None,
    base: Knobs,
    budget_bytes: int,
    latency,
    acceptance: float | None = None,
    histogram: Sequence[float] | None = None,
    k_max: int = MAX_DRAFT_LENGTH,
    max_batch: int = 64,
    chunks: Sequence[int] = SEARCH_CHUNKS,
    retain: float | None = None,
    device_overhead_bytes: int = 0,
    new_tokens: int | None = None,
    shapes: Sequence | None = None,
    ranks: Sequence[float] | None = None,
) -> SearchResult:
    """Exhaustive search over the draft's shape (plain decoding, no draft, among them), batch and prefill
    chunk under memory <= budget. `shapes`: the drafting.trees.TreeShape to try (tune: trees.runtime_shapes;
    compare: budget.search_shapes); default chains of 1..k_max. Depth stops at k_max, the histogram's
    length - 1 and Medusa's heads (one token per head). Memory is monotone in each knob, so each
    (shape, chunk) stops at the first batch that does not fit. Among equal throughput the smaller memory
    wins (the plan is then on the frontier it prints), then the larger prefill chunk; with `retain`, the
    smallest memory keeping that share wins.
    `new_tokens`: tokens per row of a static batch (throughput.batch_utilisation); None: not counted.
    `ranks`: the drafter's measured depth-1 rank histogram, for trees (throughput.predict_speed).
    The draft method is `base.draft_method` (drafting/methods.py): n-gram drafts without a `draft`."""
    from .drafting.trees import TreeShape

    method = base.method(draft is not None)
    drafts = draft is not None or method == "ngram"
    base = replace(base, tree_depth=None, tree_topk=None)
    if histogram is not None:
        k_max = min(k_max, len(histogram) - 1)
    if method == "medusa":
        k_max = min(k_max, len(draft.layer_params))  # one token per head (drafting.resolve.medusa_heads)
    if shapes is None:
        shapes = [TreeShape(k, 1, k) for k in range(1, k_max + 1)]
    tries = [None] + ([t for t in shapes if t.depth <= k_max] if drafts else [])
    speed_kwargs = {"histogram": histogram} if histogram is not None else {"acceptance": acceptance if acceptance is not None else DEFAULT_ACCEPTANCE}
    speed_kwargs.update(new_tokens=new_tokens, ranks=ranks)
    chunk_values = sorted({min(c, base.max_context) for c in chunks})
    candidates: list[Candidate] = []
    evaluated = 0
    for tree in tries:
        d, start = (draft, base.with_tree(tree)) if tree else (None, plain_knobs(base))
        for chunk in chunk_values:
            for batch in _batches(max_batch):
                knobs = replace(start, batch_size=batch, prefill_chunk=chunk)
                memory = breakdown(target, d, knobs, device_overhead_bytes)
                evaluated += 1
                if memory.total_bytes > budget_bytes:
                    break
                speed = (predict_speed(target, d, knobs, latency, **speed_kwargs) if tree else
                         predict_speed(target, None, knobs, latency))
                candidates.append(Candidate(knobs, speed, memory))
    if not candidates:
        raise SpecMemoError("nothing fits the budget, not even plain decoding at batch 1", "raise --budget or shorten --context")
    fastest = max(candidates, key=lambda c: (c.tokens_per_s, -c.total_bytes, c.knobs.chunk))
    frontier = pareto_frontier(candidates)
    chosen = fastest
    if retain is not None:
        keep = [c for c in candidates if c.tokens_per_s >= retain * fastest.tokens_per_s]
        chosen = min(keep, key=lambda c: (c.total_bytes, -c.tokens_per_s))
    plain = [c for c in candidates if c.knobs.draft_length == 0]
    best_plain = max(plain, key=lambda c: c.tokens_per_s) if plain else None
    drafted = [c for c in candidates if c.knobs.draft_length > 0]
    best_draft = max(drafted, key=lambda c: c.tokens_per_s) if drafted else None
    return SearchResult(fastest, chosen, frontier, evaluated, best_plain, best_draft)


def pareto_frontier(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates that no other beats on both memory (less) and throughput (more), by memory."""
    frontier: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.total_bytes, -c.tokens_per_s)):
        if not frontier or c.tokens_per_s > frontier[-1].tokens_per_s:
            frontier.append(c)
    return frontier


def samples_to_dicts(samples: Sequence[LatencySample]) -> list[dict]:
    return [asdict(s) for s in samples]
