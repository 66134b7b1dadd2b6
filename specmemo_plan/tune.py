"""From measured profiles to a plan: search the knobs, build the plan and the notes that explain it.

Pure arithmetic over what `profile` measured (autotune.search over the fitted curves and the
acceptance histogram); the measuring and the verify run are the engine's (engine/workflow.py),
so this module imports neither torch nor the engine.

- `tune(profile, ...)`: one measured method (a draft model, a head, MTP, n-gram or plain decoding);
- `tune_methods(profiles, ...)`: several methods measured on one device for one target, one profile each:
  every profile is searched alone, the plan is the fastest configuration of any of them inside the budget
  (with `retain`, the smallest memory keeping that share of it), and the notes say why each other lost.

Two rules keep the notes honest:
- the search stays inside what was measured: batches up to the largest profiled batch (a note
  says so when more were asked for), and a note when the context runs past the profiled ones;
- every note describes the plan that was written: SD's minimum budget is computed at the plan's
  batch and says so, and "planning plain decoding" appears only when the plan is plain decoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from .autotune import SEARCH_CHUNKS, Candidate, MeasuredProfile, SearchResult, search
from .budget import min_budget
from .errors import SpecMemoError
from .memory import Knobs, breakdown, plain_knobs
from .models import ModelShape
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
    draft_method: str = "none"  # the written plan's method (plain decoding: none)
    methods: tuple = ()  # MethodResult of every profile tune_methods weighed; () for tune


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


@dataclass(frozen=True)
class TuneJob:
    """One measured profile made ready to search: its models and method, the device, the knobs' base."""

    measured: MeasuredProfile
    target: ModelShape
    draft: ModelShape | None  # the drafter as its method reads it (a head's shape, MTP's); None: n-gram, plain
    device: DeviceSpec
    budget: int
    base: Knobs  # batch 1, k 1 (0 without a drafter), the method
    searched_batch: int
    new_tokens: int
    notes: list[str]  # on the measured range and the new tokens

    @property
    def method(self) -> str:
        return self.measured.draft_method

    @property
    def drafts(self) -> bool:
        return self.method != "none"

    @property
    def label(self) -> str:
        ref = (self.measured.draft or {}).get("ref")
        return f"{self.method} ({ref})" if ref and self.method != "mtp" else self.method

    def k_limit(self, k_max: int) -> int:
        """The longest chain searched: --k-max, the histogram's length - 1, Medusa's heads."""
        histogram = self.measured.acceptance_histogram
        limit = min(k_max, len(histogram) - 1) if histogram else k_max
        return min(limit, len(self.draft.layer_params)) if self.method == "medusa" else limit

    def shapes(self, k_max: int) -> list:
        """Chains of 1..k_limit and the trees the runtime grows, inside what was timed (MeasuredProfile.search_shapes)."""
        return self.measured.search_shapes(self.k_limit(k_max))

    def search(self, k_max: int, retain: float | None) -> tuple[SearchResult, float]:
        t0 = time.perf_counter()
        m = self.measured
        try:
            result = search(self.target, self.draft, self.base, self.budget, m.latency(), histogram=m.acceptance_histogram,
                            device_overhead_bytes=m.runtime_overhead_bytes, k_max=k_max, max_batch=self.searched_batch,
                            retain=retain, new_tokens=self.new_tokens, shapes=self.shapes(k_max),
                            ranks=m.rank_histogram)
        except SpecMemoError:
            need = breakdown(self.target, None, plain_knobs(self.base), m.runtime_overhead_bytes).total_bytes
            raise SpecMemoError(
                f"the budget {format_bytes(self.budget)} is below the minimum: plain decoding at batch 1 needs "
                f"{format_bytes(need)}", f"raise --budget to at least {need} bytes, or shorten --context") from None
        return result, time.perf_counter() - t0

    def min_budget_at(self, batch: int, chunk: int, k_max: int):
        """SD's minimum budget at `batch` over the shapes the search tries (budget.min_budget)."""
        m = self.measured
        at = replace(self.base, batch_size=batch, prefill_chunk=chunk, draft_length=1)
        return min_budget(self.target, self.draft, at, m.latency(), k_max=k_max, histogram=m.acceptance_histogram,
                          device_overhead_bytes=m.runtime_overhead_bytes, shapes=self.shapes(k_max),
                          ranks=m.rank_histogram)

    def plan(self, result: SearchResult, k_max: int, retain: float | None, search_s: float,
             methods: tuple = (), method_notes: list[str] | None = None) -> tuple[Plan, TuneReport]:
        """The plan of `result.chosen`, with the notes that explain it (method_notes first)."""
        chosen, m = result.chosen, self.measured
        minimum, plan_notes = _plan_notes(self, chosen, result, k_max)
        notes = (method_notes or []) + plan_notes + self.notes + _depth_limit_note(chosen.knobs, self.k_limit(k_max))
        use_draft = chosen.knobs.draft_length > 0
        histogram, latency = m.acceptance_histogram, m.latency()
        method = chosen.knobs.method(use_draft and self.draft is not None)
        plan = make_plan(
            m.target["ref"], self.target, m.draft["ref"] if use_draft and self.draft is not None else None,
            self.draft if use_draft else None, chosen.knobs, self.device, self.budget,
            generation=Generation(max_new_tokens=self.new_tokens), device_overhead_bytes=m.runtime_overhead_bytes,
            throughput=dict(chosen.speed.plan_fields(latency.source, m.acceptance_source),
                            acceptance_rate=acceptance_rate(histogram) if use_draft and histogram else None),
            provenance={
                "command": "specmemo-plan tune", "method": "measured latency fit + exhaustive search",
                "draft_method": method,
                "search": {"evaluated": result.evaluated, "seconds": search_s, "retain": retain,
                           "max_batch": self.searched_batch, "fastest": result.fastest.as_dict(),
                           "chosen": chosen.as_dict(), "plain": result.plain.as_dict() if result.plain else None,
                           "frontier": [c.as_dict() for c in result.frontier]},
                "fit": {"target": m.target_fit, "draft": m.draft_fit},
                "min_budget_bytes": minimum, "min_budget_batch": chosen.knobs.batch_size, "notes": notes,
                **({"methods": [r.as_dict() for r in methods]} if methods else {}),
            },
        )
        return plan, TuneReport(result, notes, minimum, chosen.knobs.batch_size, self.searched_batch, search_s,
                                method, tuple(methods))


def prepare(measured: MeasuredProfile, budget_bytes: int | None, context: int, max_new_tokens: int = 256,
            max_batch: int = 16, kv_dtype: str | None = None) -> TuneJob:
    """Check a measured profile against the budget and context asked for; its models and the base knobs."""
    target, draft = measured.shapes()
    device = DeviceSpec(**{k: v for k, v in measured.device.items() if k in DeviceSpec.__dataclass_fields__})
    budget = budget_bytes or device.total_memory_bytes
    if budget > device.total_memory_bytes:
        raise SpecMemoError(f"the budget {format_bytes(budget)} exceeds the profiled device's "
                            f"{format_bytes(device.total_memory_bytes)} ({device.name})",
                            "give a --budget the device has, or leave it out for the whole device")
    if context > target.max_position_embeddings:
        raise SpecMemoError(f"context {context} exceeds the target's {target.max_position_embeddings} positions",
                            f"use --context {target.max_position_embeddings} or less")
    method = measured.draft_method
    base = Knobs(batch_size=1, max_context=context, draft_length=0 if method == "none" else 1,
                 weight_dtype=measured.target["dtype"], kv_dtype=kv_dtype,
                 draft_method=None if method == "none" else method,  # the plan records it (plain: plain_knobs' None)
                 draft_weight_dtype=_draft_dtype(measured, draft),
                 head_embedding=measured.head_embedding)
    searched_batch, notes = _range_notes(measured, max_batch, context)
    new_tokens = min(max_new_tokens, context - 1)  # make_plan's rule: room for at least one prompt token
    if new_tokens < max_new_tokens:
        notes = notes + [f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in a context of {context}: "
                         f"the plan generates at most {new_tokens} new tokens"]
    return TuneJob(measured, target, draft, device, budget, base, searched_batch, new_tokens, notes)


def _draft_dtype(measured: MeasuredProfile, draft: ModelShape | None) -> str | None:
    """The drafter's timed dtype where it differs from the target's (None: the same, as Knobs means it)."""
    dtype = (measured.draft or {}).get("dtype")
    return dtype if draft is not None and dtype != measured.target["dtype"] else None


def _plan_notes(job: TuneJob, chosen, result: SearchResult, k_max: int) -> tuple[int | None, list[str]]:
    """(SD's minimum budget at the plan's batch, notes on why the plan does or does not draft).

    The minimum is computed at the batch of the written plan, not at batch 1: SD can lose at
    batch 1 and win at 4 (or the other way round), and a note must not judge another plan."""
    if not job.drafts:
        return None, []
    batch, use_draft = chosen.knobs.batch_size, chosen.knobs.draft_length > 0
    histogram = job.measured.acceptance_histogram
    plain = "" if use_draft else ": planning plain decoding"
    try:
        mb = job.min_budget_at(batch, chosen.knobs.prefill_chunk, k_max)
    except SpecMemoError as exc:
        return None, [f"{exc.message} at batch {batch}, the plan's{plain}"]
    if job.budget < mb.total_bytes:
        return mb.total_bytes, [f"the budget {format_bytes(job.budget)} is below SD's minimum of "
                                f"{format_bytes(mb.total_bytes)} at batch {batch}, the plan's ({mb.tree.label}){plain}"]
    best = result.best_draft
    if use_draft or best is None:
        return mb.total_bytes, []
    # SD pays against plain decoding at this batch, yet plain decoding at a larger batch is faster
    a = acceptance_rate(histogram) if histogram else None
    return mb.total_bytes, [
        f"speculative decoding does not pay within this budget: the best draft configuration "
        f"({best.knobs.tree.label}, batch {best.knobs.batch_size}) predicts {best.tokens_per_s:,.1f} "
        f"tokens/s, plain decoding at batch {batch} {chosen.tokens_per_s:,.1f}"
        + (f" (acceptance {a:.3f})" if a is not None else "") + plain]


def _depth_limit_note(knobs: Knobs, limit: int) -> list[str]:
    """A plan drafting as deep as searched says so: the optimum may lie past the limit."""
    tree = knobs.tree
    if knobs.draft_length == 0 or tree.depth < limit:
        return []
    what = f"k={tree.tokens} is the largest draft length" if tree.is_chain else f"depth {tree.depth} is the deepest tree"
    return [f"{what} searched (--k-max and the acceptance histogram stop at {limit}): "
            "a longer draft may be faster; profile with a larger --k-max to see"]


def tune(measured: MeasuredProfile, budget_bytes: int | None, context: int, max_new_tokens: int = 256,
         retain: float | None = None, k_max: int = 8, max_batch: int = 16,
         kv_dtype: str | None = None) -> tuple[Plan, TuneReport]:
    """The plan with the highest predicted throughput inside the budget (or the smallest memory
    keeping `retain` of it), from the measured curves and acceptance, with the notes that explain it."""
    job = prepare(measured, budget_bytes, context, max_new_tokens, max_batch, kv_dtype)
    result, search_s = job.search(k_max, retain)
    return job.plan(result, k_max, retain, search_s)


# ----------------------------------------------------------------------------- several methods


@dataclass(frozen=True)
class MethodResult:
    """One measured method inside the budget: its fastest drafting configuration and why it won or lost."""

    draft_method: str
    draft: str | None  # the drafter's reference (MTP: the target's; n-gram, plain: None)
    label: str  # the method, with its draft's reference where it has one
    best: Candidate | None  # fastest configuration with k >= 1 inside the budget; None: nothing fits (or plain)
    plain_tokens_per_s: float  # fastest plain decoding inside the budget, on this profile's target curve
    smallest_bytes: int | None  # its smallest drafting configuration: k = 1, batch 1, the smallest chunk
    min_budget_bytes: int | None  # cheapest budget at which it pays, at the batch of `best` (batch 1 without)
    min_budget_batch: int
    acceptance_rate: float | None  # of its histogram
    verdict: str  # chosen | slower | does not pay | over budget | more memory (retain) | plain
    notes: list = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        """Its best tokens/s over the best plain decoding inside the budget."""
        return self.best.tokens_per_s / self.plain_tokens_per_s if self.best else None

    def as_dict(self) -> dict:
        return {"draft_method": self.draft_method, "draft": self.draft, "verdict": self.verdict,
                "best": self.best.as_dict() if self.best else None, "plain_tokens_per_s": self.plain_tokens_per_s,
                "speedup": self.speedup, "smallest_bytes": self.smallest_bytes,
                "min_budget_bytes": self.min_budget_bytes, "min_budget_batch": self.min_budget_batch,
                "acceptance_rate": self.acceptance_rate}


def _check_same_setting(jobs: list[TuneJob]) -> None:
    """Methods compare on one target, dtype and device, each method (and draft) once."""
    first, seen = jobs[0], {}
    for i, job in enumerate(jobs, 1):
        m = job.measured
        for what, mine, theirs in (("target", m.target["fingerprint"], first.measured.target["fingerprint"]),
                                   ("dtype", m.target["dtype"], first.measured.target["dtype"]),
                                   ("device", (m.device.get("name"), m.device["total_memory_bytes"]),
                                    (first.measured.device.get("name"), first.measured.device["total_memory_bytes"]))):
            if mine != theirs:
                show = {"target": m.target["ref"], "dtype": m.target["dtype"], "device": m.device.get("name")}[what]
                was = {"target": first.measured.target["ref"], "dtype": first.measured.target["dtype"],
                       "device": first.measured.device.get("name")}[what]
                raise SpecMemoError(f"measured profile {i} ({job.label}) has {what} {show}, profile 1 {was}: "
                                    f"methods are compared on one target, dtype and device",
                                    "profile every method with the same target, dtype and device")
        if job.label in seen:
            raise SpecMemoError(f"measured profiles {seen[job.label]} and {i} both time {job.label}",
                                "give each method (and draft) once")
        seen[job.label] = i


def _method_result(job: TuneJob, result: SearchResult, k_max: int) -> MethodResult:
    m, best = job.measured, result.best_draft
    smallest = minimum = None
    first_chunk = min(min(SEARCH_CHUNKS), job.base.max_context)  # the search's smallest chunk
    batch, chunk = (best.knobs.batch_size, best.knobs.prefill_chunk) if best else (1, first_chunk)
    if job.drafts:  # its smallest configuration: k = 1, batch 1, the smallest chunk
        smallest = breakdown(job.target, job.draft, replace(job.base, prefill_chunk=first_chunk),
                             m.runtime_overhead_bytes).total_bytes
        try:
            minimum = job.min_budget_at(batch, chunk, k_max).total_bytes
        except SpecMemoError:  # it does not pay at that batch
            pass
    plain = result.plain.tokens_per_s
    verdict = "plain" if not job.drafts else "over budget" if best is None else \
        "does not pay" if best.tokens_per_s <= plain else "pays"
    a = acceptance_rate(m.acceptance_histogram) if m.acceptance_histogram else None
    return MethodResult(job.method, (m.draft or {}).get("ref"), job.label, best, plain, smallest, minimum, batch, a,
                        verdict)


def _describe(r: MethodResult) -> str:
    b = r.best
    return (f"{b.tokens_per_s:,.1f} tokens/s at {b.knobs.tree.label}, batch {b.knobs.batch_size} "
            f"({r.speedup:.2f}x plain decoding), {format_bytes(b.total_bytes)}")


def _method_notes(rows: list[MethodResult], chosen: Candidate, winner: int, budget: int,
                  retain: float | None) -> list[MethodResult]:
    """Each method's verdict against the written plan, as a note."""
    out = []
    for i, r in enumerate(rows):
        plan_drafts = chosen.knobs.draft_length > 0
        if r.verdict == "over budget":
            note = (f"{r.label}: over budget: its smallest configuration (k=1, batch 1) needs "
                    f"{format_bytes(r.smallest_bytes)}, the budget is {format_bytes(budget)}")
        elif r.verdict == "plain":
            note = f"{r.label}: plain decoding, {r.plain_tokens_per_s:,.1f} tokens/s"
        elif r.verdict == "does not pay":
            note = (f"{r.label}: does not pay within this budget: its best configuration predicts {_describe(r)}, "
                    f"plain decoding {r.plain_tokens_per_s:,.1f}")
        elif i == winner and plan_drafts:
            r = replace(r, verdict="chosen")
            note = f"{r.label}: chosen: {_describe(r)}"
        elif retain is not None and r.best.tokens_per_s > chosen.tokens_per_s:
            r = replace(r, verdict="more memory")
            note = (f"{r.label}: {_describe(r)}: faster, but the plan keeps {retain:g} of the best throughput in "
                    f"{format_bytes(chosen.total_bytes)}")
        else:
            r = replace(r, verdict="slower")
            note = f"{r.label}: {_describe(r)}: slower than the plan's {chosen.tokens_per_s:,.1f} tokens/s"
        out.append(replace(r, notes=[note]))
    return out


def tune_methods(profiles: list[MeasuredProfile], budget_bytes: int | None, context: int, max_new_tokens: int = 256,
                 retain: float | None = None, k_max: int = 8, max_batch: int = 16,
                 kv_dtype: str | None = None) -> tuple[Plan, TuneReport]:
    """The plan of the fastest configuration of any measured method inside the budget (each profile searched
    by `tune`'s search: k, batch, prefill chunk), or with `retain` the smallest memory keeping that share of
    it. Every configuration searched fits the budget, so a method whose smallest one does not is never chosen.
    The report's `methods` holds each method's best and verdict, its notes say why each loser lost.
    Each profile's plain decoding runs on its own target curve (profiles timing the target once share it)."""
    if not profiles:
        raise SpecMemoError("no measured profile to choose a method from", "give at least one --measured profile")
    jobs = []
    for i, p in enumerate(profiles, 1):
        try:
            jobs.append(prepare(p, budget_bytes, context, max_new_tokens, max_batch, kv_dtype))
        except SpecMemoError as exc:  # say which profile, when there are several
            if len(profiles) == 1:
                raise
            raise SpecMemoError(f"measured profile {i} ({p.draft_method}): {exc.message}", exc.hint) from None
    _check_same_setting(jobs)
    searched = [job.search(k_max, None) for job in jobs]
    search_s = sum(s for _, s in searched)
    results = [r for r, _ in searched]
    top = max(range(len(jobs)), key=lambda i: (results[i].fastest.tokens_per_s, -results[i].fastest.total_bytes, -i))
    winner, chosen = top, results[top].fastest
    if retain is not None:  # the smallest memory over every method's frontier keeping the share
        need = retain * chosen.tokens_per_s
        keep = [(c.total_bytes, -c.tokens_per_s, i, c) for i, r in enumerate(results) for c in r.frontier
                if c.tokens_per_s >= need]
        _, _, winner, chosen = min(keep, key=lambda t: t[:3])
    rows = _method_notes([_method_result(job, r, k_max) for job, r in zip(jobs, results)], chosen, winner,
                         jobs[0].budget, retain)
    notes = [f"weighed {len(jobs)} draft methods on {jobs[0].device.name}: "
             + ("the plan drafts with " + rows[winner].label if chosen.knobs.draft_length else
                "none beats plain decoding: planning plain decoding")]
    notes += [n for r in rows for n in r.notes]
    evaluated = sum(r.evaluated for r in results)  # every method's search
    return jobs[winner].plan(replace(results[winner], chosen=chosen, evaluated=evaluated), k_max, retain, search_s,
                             tuple(rows), notes)
