"""The autotuner's workflow: profile the device, tune the knobs, verify the plan with the engine.

`autotune.py` holds the arithmetic (fit, search) and never imports torch; this module drives the
engine (`engine.profiling`, `engine.runtime`), imported inside each function so that importing
the CLI stays light.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace

from .autotune import MeasuredProfile, fit_latency, relative_error_pct, samples_to_dicts, search
from .files import write_json_atomic
from .budget import min_budget
from .errors import SpecMemoError
from .memory import Knobs, breakdown
from .models import check_pair, load_shape
from .plan import DeviceSpec, Generation, Plan, make_plan, write_plan
from .throughput import acceptance_from_histogram, predict_speed, tokens_per_step_distribution
from .units import format_bytes


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def local_device(device: str | None = None) -> tuple[DeviceSpec, str, object]:
    """(DeviceSpec, torch device string, hardware profile or None) of the device the engine will use."""
    import torch

    from .hardware import probe_devices, profile_for_device

    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    devices, _ = probe_devices(use_torch=True)
    wanted = "cpu" if name == "cpu" else ("rocm" if getattr(torch.version, "hip", None) else "cuda")
    probed = next((d for d in devices if d.backend == wanted), devices[-1])
    profile = profile_for_device(probed) if probed.profile_key else None
    spec = DeviceSpec(kind=probed.backend, name=probed.name, total_memory_bytes=probed.total_memory_bytes,
                      profile=profile.key if profile else None)
    return spec, name, profile


def profile_pair(target_ref: str, draft_ref: str | None, dtype: str = "fp32", device: str | None = None,
                 acceptance: float | None = None, num_prompts: int = 16, k_max: int = 8,
                 max_context: int = 2048, repeats: int = 5, grid: dict | None = None, quick: bool = False,
                 acceptance_new_tokens: int = 48, max_batch: int = 8) -> MeasuredProfile:
    """Measure latencies of both models over a grid, fit them, and measure (or take) the acceptance."""
    from engine.loading import load_model
    from engine.profiling import default_grid, measure_acceptance, measure_latencies

    spec, torch_device, _ = local_device(device)
    target = load_model(target_ref, dtype, torch_device)
    draft = load_model(draft_ref, dtype, torch_device, seed=1) if draft_ref else None
    if draft is not None:
        check_pair(target.shape, draft.shape)
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
            log(f"acceptance: {acceptance_from_histogram(histogram):.3f} per token over {info['new_tokens']} tokens")
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


def tune(measured: MeasuredProfile, budget_bytes: int | None, context: int, max_new_tokens: int = 256,
         retain: float | None = None, k_max: int = 8, max_batch: int = 16, kv_dtype: str | None = None) -> tuple[Plan, dict]:
    """The plan with the highest predicted throughput inside the budget (or the smallest memory
    keeping `retain` of it), from the measured curves and acceptance. Returns (plan, report)."""
    target = load_shape(measured.target["ref"])
    draft = load_shape(measured.draft["ref"]) if measured.draft else None
    for role, shape, ref in (("target", target, measured.target), ("draft", draft, measured.draft)):
        if shape is not None and shape.fingerprint != ref["fingerprint"]:
            raise SpecMemoError(f"the measured profile's {role} is not {ref['ref']} any more", "run `specmemo-plan profile` again")
    device = DeviceSpec(**{k: v for k, v in measured.device.items() if k in DeviceSpec.__dataclass_fields__})
    budget = budget_bytes or device.total_memory_bytes
    dtype = measured.target["dtype"]
    base = Knobs(batch_size=1, max_context=context, draft_length=1 if draft else 0, weight_dtype=dtype, kv_dtype=kv_dtype)
    latency = measured.latency()
    histogram = measured.acceptance_histogram
    overhead = measured.runtime_overhead_bytes  # the CUDA/HIP context of a matched GPU profile; 0 on CPU
    t0 = time.perf_counter()
    try:
        result = search(target, draft, base, budget, latency, histogram=histogram, k_max=k_max,
                        max_batch=max_batch, retain=retain, device_overhead_bytes=overhead,
                        new_tokens=min(max_new_tokens, context - 1))
    except SpecMemoError:
        need = breakdown(target, None, replace(base, draft_length=0), overhead).total_bytes
        raise SpecMemoError(
            f"the budget {format_bytes(budget)} is below the minimum: plain decoding at batch 1 needs {format_bytes(need)}",
            f"raise --budget to at least {need} bytes, or shorten --context",
        ) from None
    search_s = time.perf_counter() - t0
    chosen = result.chosen
    notes = []
    minimum = None
    if draft is not None:
        try:
            mb = min_budget(target, draft, replace(base, draft_length=1), latency, k_max=k_max,
                            device_overhead_bytes=overhead, histogram=histogram)
            minimum = mb.total_bytes
            if budget < minimum:
                notes.append(f"the budget {format_bytes(budget)} is below SD's minimum of {format_bytes(minimum)} "
                             f"(k={mb.draft_length}); planning plain decoding")
        except SpecMemoError as exc:
            notes.append(f"{exc.message}: planning plain decoding")
    use_draft = chosen.knobs.draft_length > 0
    speed = chosen.speed
    acceptance = acceptance_from_histogram(histogram) if histogram else None
    best = result.best_draft
    if draft is not None and not use_draft and not notes and best is not None:
        # SD may pay at a small batch yet lose at the batch the budget allows: say what was weighed
        notes.append(f"speculative decoding does not pay within this budget: the best draft configuration "
                     f"(k={best.knobs.draft_length}, batch {best.knobs.batch_size}) predicts {best.tokens_per_s:,.1f} "
                     f"tokens/s, plain decoding at batch {chosen.knobs.batch_size} {chosen.tokens_per_s:,.1f}"
                     + (f" (acceptance {acceptance:.3f})" if acceptance is not None else "") + "; planning plain decoding")
    plan = make_plan(
        measured.target["ref"], target, measured.draft["ref"] if use_draft else None, draft if use_draft else None,
        chosen.knobs, device, budget, generation=Generation(max_new_tokens=min(max_new_tokens, context - 1)),
        device_overhead_bytes=overhead,
        throughput=dict(speed.plan_fields(latency.source, measured.acceptance_source),
                        acceptance_rate=acceptance if use_draft else None),
        provenance={
            "command": "specmemo-plan tune", "method": "measured latency fit + exhaustive search",
            "search": {"evaluated": result.evaluated, "seconds": search_s, "retain": retain,
                       "fastest": result.fastest.as_dict(), "chosen": chosen.as_dict(),
                       "plain": result.plain.as_dict() if result.plain else None,
                       "frontier": [c.as_dict() for c in result.frontier]},
            "fit": {"target": measured.target_fit, "draft": measured.draft_fit},
            "min_budget_bytes": minimum, "notes": notes,
        },
    )
    return plan, {"result": result, "notes": notes, "min_budget_bytes": minimum, "search_seconds": search_s}


def verify(plan: Plan, measured: MeasuredProfile | None = None, num_prompts: int = 8, max_new_tokens: int = 64,
           device: str | None = None, compare_plain: bool = True, models: tuple | None = None,
           worst_case: bool = True) -> dict:
    """Run the engine on the plan over calibration prompts (batches of the plan's batch), and plain
    decoding with the same batch and context; measured speed and memory beside the predictions.
    `models`: (target, draft) already loaded (engine.loading.LoadedModel), to skip loading.
    `worst_case`: also fill the whole context once (worst_case_activations), since chat prompts
    never reach the activation peak the plan reserves."""
    from engine.loading import load_model
    from engine.profiling import calibration_prompts
    from engine.runtime import Engine, Stats

    torch_device = device or (measured.device.get("torch_device") if measured else None) or "cpu"
    if models is not None:
        target, draft = models
    else:
        target = load_model(plan.target.ref, plan.knobs.weight_dtype, torch_device)
        draft = load_model(plan.draft.ref, plan.knobs.draft_dtype, torch_device, seed=1) if plan.draft else None
    prompts = [p["turns"][0] for p in calibration_prompts(num_prompts)]

    def run(p: Plan, with_draft: bool) -> dict:
        engine = Engine(p, device=torch_device, target=target, draft=draft if with_draft else None)
        B = p.knobs.batch_size
        total, contexts = Stats(p.knobs.draft_length), []
        max_new = min(max_new_tokens, p.knobs.max_context // 2)
        room = p.knobs.max_context - max_new
        for i in range(0, len(prompts), B):
            # a measurement, not a service: a prompt longer than the room left keeps its last tokens
            ids = [engine.encode(text)[-room:] for text in prompts[i : i + B]]
            result = engine.generate(ids, max_new_tokens=max_new)
            total.merge(result.stats)
            contexts += [len(x) + len(o.token_ids) / 2 for x, o in zip(ids, result.outputs)]
        hist = total.accepted_histogram
        stats = {"new_tokens": total.new_tokens, "max_new": max_new,
                 "decode_tokens_per_s": total.new_tokens / (total.total_s - total.prefill_s),
                 "tokens_per_s": total.new_tokens / total.total_s,
                 "mean_context": sum(contexts) / len(contexts), "accepted_histogram": hist,
                 "row_utilisation": total.as_dict()["row_utilisation"]}
        if p.knobs.draft_length:
            stats["acceptance_rate"] = acceptance_from_histogram(hist) if sum(hist) else None
        return {"stats": stats, "memory": engine.memory_report()}

    sd = run(plan, plan.draft is not None)
    report = {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "engine": sd}
    if measured is not None:
        # the prediction at the context the run actually saw, beside the plan's (at max_context / 2)
        target_shape = load_shape(plan.target.ref)
        draft_shape = load_shape(plan.draft.ref) if plan.draft else None
        kwargs = {"histogram": measured.acceptance_histogram} if plan.draft and measured.acceptance_histogram else {}
        at_run = predict_speed(target_shape, draft_shape, plan.knobs, measured.latency(),
                               context=int(sd["stats"]["mean_context"]), new_tokens=sd["stats"]["max_new"], **kwargs)
        report["predicted_at_run_context"] = {"tokens_per_s": at_run.tokens_per_s, "plain_tokens_per_s": at_run.plain_tokens_per_s,
                                              "speedup": at_run.speedup}
        report["throughput_error_percent"] = relative_error_pct(at_run.tokens_per_s, sd["stats"]["decode_tokens_per_s"])
    if compare_plain and plan.draft is not None:
        plain_plan = replace(plan, draft=None, knobs=replace(plan.knobs, draft_length=0, draft_weight_dtype=None),
                             prediction=replace(plan.prediction, memory=breakdown(
                                 load_shape(plan.target.ref), None,
                                 replace(plan.knobs, draft_length=0, draft_weight_dtype=None)).as_dict()))
        plain = run(plain_plan, False)
        report["plain"] = plain
        report["measured_speedup"] = sd["stats"]["decode_tokens_per_s"] / plain["stats"]["decode_tokens_per_s"]
        if "predicted_at_run_context" in report:
            at_run = report["predicted_at_run_context"]
            report["plain_throughput_error_percent"] = relative_error_pct(
                at_run["plain_tokens_per_s"], plain["stats"]["decode_tokens_per_s"])
    if worst_case:
        report["worst_case"] = worst_case_activations(
            plan, target, draft if plan.draft else None, torch_device, prompts)
    measured_memory = sd["memory"]["measured"]
    report["memory_error_percent"] = {
        "static_total": relative_error_pct(
            sum(sd["memory"]["predicted"]["components"][c] for c in ("target_weights", "draft_weights", "target_kv", "draft_kv", "candidate_buffers")),
            sum(measured_memory["components"][c] for c in ("target_weights", "draft_weights", "target_kv", "draft_kv", "candidate_buffers"))),
        "total": measured_memory["total_error_percent"],
    }
    return report


def worst_case_activations(plan: Plan, target, draft, torch_device: str, texts: list[str]) -> dict:
    """The transient peak the plan's activation estimate bounds: every row of the plan's batch
    prefilled to the full context (max_context - 1 prompt tokens, so the last prefill chunk
    attends over every slot), one new token. Measured as the prefill phase's transient peak
    (CPU: peak RSS growth; CUDA/ROCm: torch's peak allocated bytes over the static ones)."""
    from engine.runtime import Engine

    engine = Engine(plan, device=torch_device, target=target, draft=draft)
    room = plan.knobs.max_context - 1
    ids = [token for text in texts for token in engine.encode(text, chat_template=False)] or [0]
    prompt = (ids * (room // len(ids) + 1))[:room]  # real text, repeated to fill the context
    engine.generate([prompt] * plan.knobs.batch_size, max_new_tokens=1, ignore_eos=True)
    memory = engine.memory_report()
    measured = memory["measured"]["components"]["activations"]
    predicted = memory["predicted"]["components"]["activations"]
    return {"prompt_tokens": room, "batch": plan.knobs.batch_size, "predicted_activation_bytes": predicted,
            "measured_activation_bytes": measured,
            # the memory report's convention: measured relative to predicted
            "error_percent": 100.0 * (measured - predicted) / predicted if measured is not None and predicted else None}


def write_verified(plan: Plan, report: dict, path) -> Plan:
    """The plan with `measured` filled from a verify report, written atomically."""
    stats = report["engine"]["stats"]
    measured = {
        "decode_tokens_per_s": stats["decode_tokens_per_s"], "acceptance_rate": stats.get("acceptance_rate"),
        "speedup_over_plain": report.get("measured_speedup"),
        "plain_decode_tokens_per_s": report["plain"]["stats"]["decode_tokens_per_s"] if "plain" in report else None,
        "predicted_at_run_context": report.get("predicted_at_run_context"),
        "throughput_error_percent": report.get("throughput_error_percent"),
        "memory": report["engine"]["memory"]["measured"]["components"],
        "memory_error_percent": report["memory_error_percent"],
        "worst_case_activations": report.get("worst_case"),
        "run": {"prompts": report["prompts"], "max_new_tokens": report["max_new_tokens"],
                "mean_context": stats["mean_context"]},
    }
    verified = replace(plan, measured=measured)
    write_plan(verified, path)
    return verified
