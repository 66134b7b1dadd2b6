"""The autotuner's on-device steps: profile the pair, then verify a plan by running the engine.

`specmemo_plan.tune` turns a measured profile into a plan and never imports the engine (the
planner does not depend on the runtime); this module does the measuring (engine.profiling) and
the running (engine.runtime) around it. The verify report is typed (VerifyReport and its parts)
so that the commands, the renderers (specmemo_plan.render.workflow) and the benches read fields,
not string keys; `as_dict` gives the JSON, `measured_field` the plan file's `measured` entry.
Every error is quantities.error_percent: measured relative to predicted.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace

from specmemo_plan.autotune import MeasuredProfile, fit_latency, samples_to_dicts
from specmemo_plan.budget import check_weights_fit
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.files import write_json_atomic
from specmemo_plan.memory import Knobs, breakdown, plain_knobs
from specmemo_plan.models import check_pair, load_shape
from specmemo_plan.plan import DeviceSpec, Plan, make_plan, write_plan
from specmemo_plan.quantities import acceptance_rate, error_percent
from specmemo_plan.throughput import predict_speed, tokens_per_step_distribution

from .loading import load_model
from .profiling import calibration_prompts, default_grid, measure_acceptance, measure_latencies
from .results import Stats
from .runtime import STATIC_COMPONENTS, Engine


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _this_device(device: str | None = None) -> tuple[DeviceSpec, str, object]:
    """(DeviceSpec, torch device string, hardware profile or None) of the device the engine will use:
    specmemo_plan.hardware.this_device for the torch device asked for (default: cuda if present)."""
    import torch

    from specmemo_plan.hardware import this_device

    local = this_device(torch_device=device or ("cuda" if torch.cuda.is_available() else "cpu"), use_torch=True)
    return local.spec, local.torch_device, local.profile


def check_budget_floor(target_ref: str, dtype: str, context: int, budget: int | None, device: str | None = None) -> None:
    """Refuse, before any profiling, a budget below what tune's smallest plan needs: plain decoding of
    the target at batch 1 over `context` (its weights, KV, step buffers, activations, and the device
    profile's runtime overhead; budget.check_weights_fit first, for the weights alone). These are the
    floors tune itself applies after profiling, in the same words, with the same numbers."""
    if budget is None:
        return
    from specmemo_plan.units import format_bytes

    target = load_shape(target_ref)
    _, _, profile = _this_device(device)
    overhead = profile.runtime_overhead_bytes if profile else 0
    knobs = Knobs(batch_size=1, max_context=context, draft_length=0, weight_dtype=dtype)
    check_weights_fit(target, None, knobs, budget, overhead)
    need = breakdown(target, None, knobs, overhead).total_bytes
    if need > budget:
        raise SpecMemoError(
            f"the budget {format_bytes(budget)} is below the minimum: plain decoding at batch 1 needs {format_bytes(need)}",
            f"raise --budget to at least {need} bytes, or shorten --context")


# ----------------------------------------------------------------------------- profile


def check_shapes_first(target_ref: str, draft_ref: str | None, max_context: int) -> None:
    """What the shapes alone refuse, before any weights load (a preset's random 7B takes minutes): the pair's
    tokenizer and a context past the target's positions."""
    target = load_shape(target_ref)
    draft = load_shape(draft_ref) if draft_ref else None
    check_pair(target, draft)
    if max_context > target.max_position_embeddings:
        raise SpecMemoError(f"context {max_context} exceeds the target's {target.max_position_embeddings} positions",
                            f"use --context {target.max_position_embeddings} or less")


def profile_pair(target_ref: str, draft_ref: str | None, dtype: str = "fp32", device: str | None = None,
                 acceptance: float | None = None, num_prompts: int = 16, k_max: int = 8,
                 max_context: int = 2048, repeats: int = 5, grid: dict | None = None, quick: bool = False,
                 acceptance_new_tokens: int = 48, max_batch: int = 8) -> MeasuredProfile:
    """Measure latencies of both models over a grid, fit them, and measure (or take) the acceptance."""
    check_shapes_first(target_ref, draft_ref, max_context)
    spec, torch_device, _ = _this_device(device)
    target = load_model(target_ref, dtype, torch_device)
    draft = load_model(draft_ref, dtype, torch_device, seed=1) if draft_ref else None
    grid = grid or default_grid(torch_device, max_context, quick, max_batch)
    t0 = time.perf_counter()
    samples = measure_latencies(target, "target", dtype, grid["batches"], grid["token_counts"], grid["contexts"], repeats)
    if draft is not None:
        samples += measure_latencies(draft, "draft", dtype, grid["batches"], [1, 2], grid["contexts"], repeats)
    latency_s = time.perf_counter() - t0
    target_fit = fit_latency([s for s in samples if s.model == "target"])
    draft_fit = fit_latency([s for s in samples if s.model == "draft"]) if draft is not None else None
    log(f"latency fit: target {target_fit.mean_abs_pct_error:.1f}% mean error"
        + (f", draft {draft_fit.mean_abs_pct_error:.1f}%" if draft_fit else ""))
    histogram, source, notes = None, "given", {"latency_seconds": latency_s, "grid": grid}
    if draft is not None:
        if acceptance is None:
            t1 = time.perf_counter()
            histogram, info = measure_acceptance(target, draft, target_ref, dtype, k_max, num_prompts,
                                                 max_new_tokens=acceptance_new_tokens)
            notes.update(acceptance_seconds=time.perf_counter() - t1, acceptance_run=info)
            source = "measured"
            log(f"acceptance: {acceptance_rate(histogram):.3f} per token over {info['new_tokens']} tokens")
        else:
            # i.i.d. acceptance a as a histogram at k_max: P(i accepted) = a^i (1 - a), P(k_max) = a^k_max
            histogram = tokens_per_step_distribution(k_max, acceptance)
    return MeasuredProfile(
        device=asdict(spec) | {"torch_device": torch_device},
        target={"ref": target_ref, "dtype": dtype, "fingerprint": target.shape.fingerprint},
        draft={"ref": draft_ref, "dtype": dtype, "fingerprint": draft.shape.fingerprint} if draft else None,
        samples=samples_to_dicts(samples), target_fit=asdict(target_fit),
        draft_fit=asdict(draft_fit) if draft_fit else None,
        acceptance_histogram=histogram, acceptance_source=source if draft else "none",
        notes=notes | {"random_weights": {"target": target.random_weights, "draft": draft.random_weights if draft else None}},
    )


def save_measured(profile: MeasuredProfile, path) -> None:
    write_json_atomic(asdict(profile), path)


# ----------------------------------------------------------------------------- the verify report


@dataclass(frozen=True)
class RunStats:
    """One plan's run over the calibration prompts, all batches together."""

    draft_length: int
    new_tokens: int
    max_new: int  # new tokens asked per prompt
    decode_tokens_per_s: float
    tokens_per_s: float
    mean_context: float  # cached tokens a step saw on average (prompt + half the answer)
    accepted_histogram: list[int]
    row_utilisation: float | None
    acceptance_rate: float | None  # quantities.acceptance_rate; None for plain decoding
    rank_histogram: list[int] = field(default_factory=list)  # Stats.rank_histogram ([] unmeasured)

    def as_dict(self) -> dict:
        data = {"new_tokens": self.new_tokens, "max_new": self.max_new, "decode_tokens_per_s": self.decode_tokens_per_s,
                "tokens_per_s": self.tokens_per_s, "mean_context": self.mean_context,
                "accepted_histogram": self.accepted_histogram, "row_utilisation": self.row_utilisation}
        if self.draft_length:
            data["acceptance_rate"] = self.acceptance_rate
        return data


@dataclass(frozen=True)
class RunMeasurement:
    stats: RunStats
    memory: dict  # Engine.memory_report(): {"predicted": ..., "measured": ...}, as `python -m engine --json`
    raw: Stats | None = field(default=None, repr=False, compare=False)  # the engine's own, for pooling passes
    contexts: tuple = ()  # each row's mean cached tokens

    def static_bytes(self, side: str) -> int:
        """Sum of the static components (weights, KV, step buffers), "predicted" or "measured"."""
        return sum(self.memory[side]["components"][c] for c in STATIC_COMPONENTS)

    def as_dict(self) -> dict:
        return {"stats": self.stats.as_dict(), "memory": self.memory}


@dataclass(frozen=True)
class PredictedAtRun:
    """The prediction at the context the run actually saw (the plan's is at max_context / 2)."""

    tokens_per_s: float
    plain_tokens_per_s: float
    speedup: float


@dataclass(frozen=True)
class WorstCase:
    """Activations with the whole context filled once (worst_case_activations)."""

    prompt_tokens: int
    batch: int
    predicted_activation_bytes: int
    measured_activation_bytes: int | None
    error_percent: float | None


@dataclass(frozen=True)
class MemoryErrors:
    static_total: float | None  # the static components together: 0 when the engine allocates the plan
    total: float | None  # everything measured against the plan's total


@dataclass(frozen=True)
class VerifyReport:
    prompts: int  # rows generated: whole batches of the plan's batch
    max_new_tokens: int
    engine: RunMeasurement  # the plan as written
    memory_error_percent: MemoryErrors
    plain: RunMeasurement | None = None  # plain decoding, same batch and context
    predicted_at_run_context: PredictedAtRun | None = None  # with a measured profile
    throughput_error_percent: float | None = None
    plain_throughput_error_percent: float | None = None
    measured_speedup: float | None = None
    worst_case: WorstCase | None = None
    distinct_prompts: int | None = None  # calibration prompts among the rows (fewer: the set was cycled)
    order: str = "plan"  # the runs in the order they ran; "plan, plain, plain, plan": each side's two pooled

    def as_dict(self) -> dict:
        """The report as JSON; entries that were not measured are left out."""
        data = {"prompts": self.prompts, "distinct_prompts": self.distinct_prompts, "order": self.order,
                "max_new_tokens": self.max_new_tokens, "engine": self.engine.as_dict(),
                "predicted_at_run_context": asdict(self.predicted_at_run_context) if self.predicted_at_run_context else None,
                "throughput_error_percent": self.throughput_error_percent,
                "plain": self.plain.as_dict() if self.plain else None, "measured_speedup": self.measured_speedup,
                "plain_throughput_error_percent": self.plain_throughput_error_percent,
                "worst_case": asdict(self.worst_case) if self.worst_case else None,
                "memory_error_percent": asdict(self.memory_error_percent)}
        return {key: value for key, value in data.items() if value is not None}

    def measured_field(self) -> dict:
        """The plan file's `measured` entry."""
        stats = self.engine.stats
        return {
            "decode_tokens_per_s": stats.decode_tokens_per_s, "acceptance_rate": stats.acceptance_rate,
            "speedup_over_plain": self.measured_speedup,
            "plain_decode_tokens_per_s": self.plain.stats.decode_tokens_per_s if self.plain else None,
            "predicted_at_run_context": asdict(self.predicted_at_run_context) if self.predicted_at_run_context else None,
            "throughput_error_percent": self.throughput_error_percent,
            "memory": self.engine.memory["measured"]["components"],
            "memory_error_percent": asdict(self.memory_error_percent),
            "worst_case_activations": asdict(self.worst_case) if self.worst_case else None,
            "run": {"prompts": self.prompts, "distinct_prompts": self.distinct_prompts,
                    "max_new_tokens": self.max_new_tokens, "mean_context": stats.mean_context, "order": self.order},
        }


# ----------------------------------------------------------------------------- verify


def run_prompts(plan: Plan, target, draft, torch_device: str, prompts: list[str], max_new_tokens: int,
                ranks: bool = False) -> RunMeasurement:
    """The engine on `plan` over `prompts`, in batches of the plan's batch: measured speed and memory.
    A measurement, not a service: a prompt longer than the room left keeps its last tokens.
    `ranks`: also the depth-1 rank histogram of a head's or n-gram's chain (Engine.measure_ranks)."""
    engine = Engine(plan, device=torch_device, target=target, draft=draft)
    engine.measure_ranks = ranks
    B = plan.knobs.batch_size
    total, contexts = Stats(plan.knobs.draft_length), []
    max_new = min(max_new_tokens, plan.knobs.max_context // 2)
    room = plan.knobs.max_context - max_new
    for i in range(0, len(prompts), B):
        ids = [engine.encode(text)[-room:] for text in prompts[i : i + B]]
        result = engine.generate(ids, max_new_tokens=max_new)
        total.merge(result.stats)
        contexts += [len(x) + len(o.token_ids) / 2 for x, o in zip(ids, result.outputs)]
    return RunMeasurement(_run_stats(total, contexts, max_new), engine.memory_report(), total, tuple(contexts))


def _run_stats(total: Stats, contexts, max_new: int) -> RunStats:
    return RunStats(
        draft_length=total.draft_length, new_tokens=total.new_tokens, max_new=max_new,
        decode_tokens_per_s=total.decode_tokens_per_s,  # tokens after the prefill's first, per decode second
        tokens_per_s=total.new_tokens / total.total_s, mean_context=sum(contexts) / len(contexts),
        accepted_histogram=total.accepted_histogram, row_utilisation=total.as_dict()["row_utilisation"],
        acceptance_rate=total.acceptance_rate, rank_histogram=total.rank_histogram,
    )


def pooled(first: RunMeasurement, second: RunMeasurement) -> RunMeasurement:
    """Two passes of one plan as one run: the engine's counts and seconds summed (tokens/s over both passes),
    the first pass's memory report."""
    total = Stats(first.raw.draft_length)
    total.merge(first.raw)
    total.merge(second.raw)
    contexts = first.contexts + second.contexts
    return RunMeasurement(_run_stats(total, contexts, first.stats.max_new), first.memory, total, contexts)


def _plain_plan(plan: Plan) -> Plan:
    """The plan without its draft: plain decoding with the same batch, context, device and budget, made by
    make_plan (so its per-device shares and placement are the plain ones the engine's checks recompute)."""
    overhead = plan.per_device[0].memory.components["runtime_overhead"]  # one device's, as make_plan takes it
    return make_plan(plan.target.ref, load_shape(plan.target.ref), None, None, plain_knobs(plan.knobs), plan.device,
                     plan.budget_bytes, generation=plan.generation, device_overhead_bytes=overhead,
                     provenance=plan.provenance, policy=plan.placement.policy)


def _predict_at_run(plan: Plan, measured: MeasuredProfile, stats: RunStats) -> PredictedAtRun:
    from specmemo_plan.drafting.resolve import resolve_draft

    target = load_shape(plan.target.ref)
    draft = resolve_draft(plan.target.ref, target, plan.draft.ref if plan.draft else None, plan.knobs.draft_method,
                          plan.knobs.head_embedding)[1]
    drafts = plan.knobs.draft_length > 0  # n-gram plans draft without a draft model
    kwargs = {"histogram": measured.acceptance_histogram, "ranks": measured.rank_histogram} \
        if drafts and measured.acceptance_histogram else {}
    speed = predict_speed(target, draft, plan.knobs, measured.latency(), context=int(stats.mean_context),
                          new_tokens=stats.max_new, **kwargs)
    return PredictedAtRun(speed.tokens_per_s, speed.plain_tokens_per_s, speed.speedup)


def verify_prompts(num_prompts: int, batch: int) -> list[str]:
    """At least `num_prompts` calibration prompts, in whole batches of the plan's `batch`: a verify run
    measures the plan as it runs, never a half-empty batch. Past the calibration set's size it is cycled."""
    rows = -(-num_prompts // batch) * batch
    calibration = [p["turns"][0] for p in calibration_prompts()]
    if rows != num_prompts:
        cycled = f"; the {len(calibration)} calibration prompts cycled" if rows > len(calibration) else ""
        log(f"verify: {rows} prompts, {rows // batch} full batch(es) of the plan's batch {batch} "
            f"({num_prompts} asked{cycled})")
    return [calibration[i % len(calibration)] for i in range(rows)]


def verify(plan: Plan, measured: MeasuredProfile | None = None, num_prompts: int = 8, max_new_tokens: int = 64,
           device: str | None = None, compare_plain: bool = True, models: tuple | None = None,
           worst_case: bool = True, abba: bool = True) -> VerifyReport:
    """Run the engine on the plan over calibration prompts, in whole batches of the plan's batch
    (verify_prompts: `num_prompts` rounded up), and plain decoding with the same batch and context;
    measured speed and memory beside the predictions. `abba`: the plan, plain, plain, the plan, each pair
    pooled, so a machine whose speed drifts during the runs (shared hosts drift by tens of percent over
    seconds) moves both sides alike: the measured speedup is their ratio. One engine at a time, as before.
    `models`: (target, draft) already loaded (engine.loading.LoadedModel), to skip loading.
    `worst_case`: also fill the whole context once (worst_case_activations), since chat prompts
    never reach the activation peak the plan reserves."""
    torch_device = device or (measured.device.get("torch_device") if measured else None) or "cpu"
    if models is not None:
        target, draft = models
    else:
        target = load_model(plan.target.ref, plan.knobs.weight_dtype, torch_device)
        model_draft = plan.draft is not None and plan.knobs.method(True) == "draft-model"  # a head: the Engine loads it
        draft = load_model(plan.draft.ref, plan.knobs.draft_dtype, torch_device, seed=1) if model_draft else None
    draft = draft if plan.draft is not None else None
    prompts = verify_prompts(num_prompts, plan.knobs.batch_size)
    sd = run_prompts(plan, target, draft, torch_device, prompts, max_new_tokens)
    plain = None
    if compare_plain and plan.knobs.method(plan.draft is not None) != "none":  # n-gram plans have no draft model
        plain_plan = _plain_plan(plan)
        plain = run_prompts(plain_plan, target, None, torch_device, prompts, max_new_tokens)
        if abba:
            plain = pooled(plain, run_prompts(plain_plan, target, None, torch_device, prompts, max_new_tokens))
            sd = pooled(sd, run_prompts(plan, target, draft, torch_device, prompts, max_new_tokens))
    at_run = _predict_at_run(plan, measured, sd.stats) if measured is not None else None
    order = "plan" if plain is None else "plan, plain, plain, plan" if abba else "plan, plain"
    return VerifyReport(
        order=order, prompts=len(prompts), distinct_prompts=len(set(prompts)), max_new_tokens=max_new_tokens, engine=sd,
        memory_error_percent=MemoryErrors(
            static_total=error_percent(sd.static_bytes("measured"), sd.static_bytes("predicted")),
            total=sd.memory["measured"]["total_error_percent"]),
        plain=plain, predicted_at_run_context=at_run,
        throughput_error_percent=error_percent(sd.stats.decode_tokens_per_s, at_run.tokens_per_s) if at_run else None,
        plain_throughput_error_percent=error_percent(plain.stats.decode_tokens_per_s, at_run.plain_tokens_per_s)
        if at_run and plain else None,
        measured_speedup=sd.stats.decode_tokens_per_s / plain.stats.decode_tokens_per_s if plain else None,
        worst_case=worst_case_activations(plan, target, draft, torch_device, prompts) if worst_case else None,
    )


def worst_case_activations(plan: Plan, target, draft, torch_device: str, texts: list[str]) -> WorstCase:
    """The transient peak the plan's activation estimate bounds: every row of the plan's batch
    prefilled to the full context (max_context - 1 prompt tokens, so the last prefill chunk
    attends over every slot), one new token. Measured as the prefill phase's transient peak
    (CPU: peak RSS growth; CUDA/ROCm: torch's peak allocated bytes over the static ones)."""
    engine = Engine(plan, device=torch_device, target=target, draft=draft)
    room = plan.knobs.max_context - 1
    ids = [token for text in texts for token in engine.encode(text, chat_template=False)] or [0]
    prompt = (ids * (room // len(ids) + 1))[:room]  # real text, repeated to fill the context
    engine.generate([prompt] * plan.knobs.batch_size, max_new_tokens=1, ignore_eos=True)
    memory = engine.memory_report()
    measured = memory["measured"]["components"]["activations"]
    predicted = memory["predicted"]["components"]["activations"]
    return WorstCase(prompt_tokens=room, batch=plan.knobs.batch_size, predicted_activation_bytes=predicted,
                     measured_activation_bytes=measured, error_percent=error_percent(measured, predicted))


def write_verified(plan: Plan, report: VerifyReport, path) -> Plan:
    """The plan with `measured` filled from a verify report, written atomically."""
    verified = replace(plan, measured=report.measured_field())
    write_plan(verified, path)
    return verified
