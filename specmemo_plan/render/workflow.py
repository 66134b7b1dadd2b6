"""Tables for the on-device side: profile fits, tune and verify reports, engine runs, the benches.

Everything that puts a measurement beside a prediction renders here, in the one table style
(`render.table`), with the one error convention (quantities.error_percent: measured relative to
predicted, `+` when the prediction was too low). The typed reports (specmemo_plan.tune.TuneReport,
engine.workflow.VerifyReport) are read by attribute; nothing here imports torch or the engine, so
the renderers load as fast as the calculator's.
"""

from __future__ import annotations

from ..units import format_bytes
from . import describe_bytes, gib, key_values, table


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:+.{digits}f}%"


def _rate(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def fit_rows(measured) -> str:
    """The fitted curves of a measured profile: floor, context terms, and g(B*n) at its knots (ms)."""
    from ..autotune import LatencyFit

    rows = []
    for role, data in (("target", measured.target_fit), ("draft", measured.draft_fit)):
        if data:
            fit = LatencyFit.from_dict(data)
            c0, c2, c3 = fit.coefficients[0], *fit.coefficients[-2:]
            g = " ".join(f"{x}:{fit.g_ms(x):.3g}" for x in (fit.knots or (1, 8, 64)))
            rows.append([role, f"{c0:.4g}", g, f"{c2:.3g}", f"{c3:.3g}", f"{fit.mean_abs_pct_error:.1f}%"])
    return table(rows, ["model", "c0 ms", "g(B*n) ms at B*n", "c2 ms/(B*S)", "c3 ms/(B*n*S)", "fit error"])


# ----------------------------------------------------------------------------- tune and verify


def prediction_sources(prediction) -> str:
    """Where a plan's predicted tokens/s come from: its latency model and its acceptance (plan.Prediction)."""
    from .planner import acceptance_words, latency_words

    text = f"prediction from {latency_words(prediction.latency_source)}"
    if prediction.acceptance_rate is not None:
        how = {"given": "the given acceptance {:g} (`profile --acceptance`, not measured)"}.get(prediction.acceptance_source)
        text += " at " + (how.format(prediction.acceptance_rate) if how else
                          acceptance_words(prediction.acceptance_rate, prediction.acceptance_source))
    return text


FRONTIER_ROWS = 16  # a tree search's frontier runs to dozens of points: print this many, evenly spread


def _thin(points: list, most: int, keep=None) -> list:
    """About `most` of `points`, evenly spread, the first, the last and `keep` (the plan) always among them."""
    if len(points) <= most:
        return list(points)
    picks = {round(i * (len(points) - 1) / (most - 1)) for i in range(most)}
    picks |= {i for i, p in enumerate(points) if p is keep}
    return [points[i] for i in sorted(picks)]


def render_tune(plan, report, verified=None) -> str:
    """The written plan, the notes that explain it, the frontier searched; the verify run if any."""
    result = report.result
    shown = _thin(result.frontier, FRONTIER_ROWS, result.chosen)
    rows = [[c.knobs.tree.label if c.knobs.draft_length else "plain", c.knobs.batch_size, c.knobs.chunk, gib(c.total_bytes),
             f"{c.tokens_per_s:,.1f}", f"{c.speed.speedup:.2f}x"] for c in shown]
    p = plan.prediction
    method = getattr(report, "draft_method", "none")
    named = f"{method}, " if report.methods or method not in ("draft-model", "none") else ""
    lines = [f"wrote plan: {named}{plan.knobs.tree.label}, batch {plan.knobs.batch_size}, prefill chunk {plan.knobs.chunk}, "
             f"context {plan.knobs.max_context}, predicted {p.tokens_per_s:,.1f} tokens/s "
             f"({p.speedup:.2f}x plain), {describe_bytes(p.memory['total_bytes'])}", prediction_sources(p)]
    lines += [f"note: {n}" for n in report.notes]
    if report.methods:
        lines += ["draft methods inside the budget:", tune_methods_table(report.methods)]
    some = f" ({len(shown)} of its {len(result.frontier)} points; the plan's provenance holds all)" \
        if len(shown) < len(result.frontier) else ""
    lines.append(f"searched {result.evaluated} configurations in {report.search_seconds * 1e3:.0f} ms; "
                 f"memory/throughput frontier{some}:")
    lines.append(table(rows, ["draft", "batch", "chunk", "GiB", "tokens/s", "vs plain"]))
    if verified is not None:
        lines.append(render_verify(verified))
    return "\n".join(lines)


def tune_methods_table(methods) -> str:
    """tune over several measured methods: each one's best inside the budget and its verdict (tune.MethodResult)."""
    rows = []
    for r in methods:
        b = r.best
        rows.append([r.label, r.verdict, b.knobs.tree.label if b else "-", b.knobs.batch_size if b else "-",
                     gib(b.total_bytes) if b else "-", f"{b.tokens_per_s:,.1f}" if b else "-",
                     f"{r.speedup:.2f}x" if b else "-", gib(r.min_budget_bytes) if r.min_budget_bytes else "-"])
    return table(rows, ["method", "verdict", "best draft", "batch", "GiB", "tokens/s", "vs plain", "SD min budget GiB"])


def render_verify(v) -> str:
    """Measured beside predicted: tokens/s of the plan and of plain decoding, memory per component."""
    at_run = v.predicted_at_run_context
    sd = v.engine.stats
    rows = [["engine (plan)", f"{sd.decode_tokens_per_s:,.1f}", f"{at_run.tokens_per_s:,.1f}" if at_run else "-",
             _pct(v.throughput_error_percent), _rate(sd.acceptance_rate)]]
    if v.plain is not None:
        rows.append(["plain decoding", f"{v.plain.stats.decode_tokens_per_s:,.1f}",
                     f"{at_run.plain_tokens_per_s:,.1f}" if at_run else "-", _pct(v.plain_throughput_error_percent), "-"])
    cycled = getattr(v, "distinct_prompts", v.prompts) < v.prompts
    lines = [f"verified on {v.prompts} calibration prompts, up to {v.max_new_tokens} new tokens each"
             + (f" (whole batches of the plan's batch; {v.distinct_prompts} distinct prompts cycled)" if cycled else "")
             + (f"; runs {v.order}, each side's two pooled" if getattr(v, "order", "").count(",") > 1 else "")
             + ":",
             table(rows, ["run", "measured tok/s (decode)", "predicted tok/s", "error", "acceptance"])]
    if v.measured_speedup is not None:
        verdict = "pays" if v.measured_speedup > 1 else "does NOT pay"
        lines.append(f"speculative decoding {verdict} here: {v.measured_speedup:.2f}x plain decoding (measured)")
    lines.append(memory_components(v.engine.memory))
    w = v.worst_case
    if w is not None:
        measured = "-" if w.measured_activation_bytes is None else gib(w.measured_activation_bytes)
        error = "" if w.error_percent is None else f" ({w.error_percent:+.1f}%)"
        lines.append(f"activations with the context filled ({w.batch} x {w.prompt_tokens} prompt tokens): "
                     f"predicted {gib(w.predicted_activation_bytes)} GiB, measured {measured} GiB{error}")
    return "\n".join(lines)


def memory_components(memory: dict) -> str:
    """An engine memory report (Engine.memory_report) per component, in GiB."""
    predicted, measured = memory["predicted"]["components"], memory["measured"]["components"]
    error = memory["measured"]["error_percent"]
    rows = [[name, gib(predicted[name]), "-" if measured.get(name) is None else gib(measured[name]), _pct(error.get(name))]
            for name in predicted]
    return table(rows, ["component", "predicted GiB", "measured GiB", "error"])


# ----------------------------------------------------------------------------- python -m engine


def _bytes(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,} ({format_bytes(value)})"


def render_stats(stats: dict) -> str:
    """A run's statistics (engine.results.Stats.as_dict)."""
    sec = stats["seconds"]
    return key_values([
        ("new tokens", stats["new_tokens"]),
        ("tokens/s (with prefill)", f"{stats['tokens_per_s']:.2f}" if stats["tokens_per_s"] else "n/a"),
        ("draft length k", stats["draft_length"]),
        ("steps", stats["steps"]),
        ("acceptance rate", f"{stats['acceptance_rate']:.3f}" if stats["acceptance_rate"] is not None else "n/a"),
        ("tokens per step", f"{stats['tokens_per_step']:.2f}" if stats["tokens_per_step"] else "n/a"),
        ("accepted drafts per step (histogram)", " ".join(f"{k}:{v}" for k, v in stats["accepted_histogram"].items())),
        ("time prefill / draft / verify / accept / other (s)",
         " / ".join(f"{sec[key]:.3f}" for key in ("prefill", "draft", "verify", "accept", "other"))),
    ])


def render_memory(memory: dict) -> str:
    """An engine memory report in bytes, with its total, source and budget cap."""
    predicted, measured = memory["predicted"]["components"], memory["measured"]["components"]
    error = memory["measured"]["error_percent"]
    rows = [(name, _bytes(predicted.get(name)), _bytes(measured.get(name)), _pct(error.get(name), 2)) for name in predicted]
    rows.append(("total", _bytes(memory["predicted"]["total_bytes"]), _bytes(memory["measured"]["total_bytes"]),
                 _pct(memory["measured"]["total_error_percent"], 2)))
    lines = [table(rows, ["component", "predicted", "measured", "error"]), f"measured: {memory['measured']['source']}"]
    cap = memory["measured"].get("cap")
    if cap:
        lines.append(f"capped at the plan's budget: {format_bytes(cap['budget_bytes'])} "
                     f"(fraction {cap['fraction']:.3f}); headroom over the prediction {format_bytes(cap['headroom_bytes'])}, "
                     f"after the run {format_bytes(cap['headroom_after_bytes'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the benches


def engine_bench_table(methods: dict, identical: dict) -> str:
    """bench/engine_bench.py: tokens/s and peak generation memory per method."""
    rows = [[name, f"{r['tokens_per_s']:.2f}", format_bytes(r["peak_generation_bytes"]), r["tokens"],
             "yes" if identical[name] else "NO"] for name, r in methods.items()]
    return table(rows, ["method", "tokens/s", "peak generation memory", "new tokens", "same tokens as plain"])


def measured_grid_table(grid: list[dict]) -> str:
    """bench/autotune_bench.py: each (k, batch) run, measured beside predicted tokens/s."""
    rows = [[r["k"], r["batch"], f"{r['measured']:.1f}", f"{r['predicted']:.1f}", _pct(r["error_percent"], 0),
             _rate(r["acceptance"], ".2f")] for r in grid]
    return table(rows, ["k", "batch", "measured tok/s", "predicted tok/s", "error", "acceptance"])


def gpu_validate_table(rows: list[dict], on_gpu: bool) -> str:
    """bench/gpu_validate.py: predicted vs measured peak memory and tokens/s per configuration."""
    out = []
    for r in rows:
        name = f"{r['target'].rsplit('/', 1)[-1].replace('.json', '')} {r['dtype']} B={r['batch']} C={r['context']} k={r['draft_length']}"
        if "error" in r:
            out.append([name, "-", "-", "-", r["error"][:60]])
            continue
        pred = r["predicted"]["total_bytes"] - r["predicted"]["components"]["runtime_overhead"]
        if on_gpu:
            out.append([name, gib(pred), gib(r["peak_allocated_bytes"]), _pct(r["peak_error_percent"]),
                        f"{r.get('predicted_tokens_per_s', 0):.0f} / {r['measured_tokens_per_s']:.0f}"])
        else:
            out.append([name, gib(pred), "-", f"static {_pct(r['static_error_percent'])}", f"- / {r['measured_tokens_per_s']:.0f}"])
    return table(out, ["configuration", "predicted peak GiB", "measured peak GiB", "error", "tok/s predicted / measured"])
