"""`specmemo-plan`: thin click glue. Each command gathers numbers, then renders a table or --json.

The calculator commands (presets, estimate, min-budget, fit, plan) import neither torch nor
transformers, so they answer in a fraction of a second.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import replace

import click

from . import budget as budget_mod
from . import report
from .errors import SpecMemoError
from .memory import KV_DTYPES, WEIGHT_DTYPES, Knobs, breakdown
from .models import check_pair, list_presets, load_preset_config, load_shape
from .throughput import DEFAULT_ACCEPTANCE, BandwidthLatency, predict_speed, roofline_from_profile
from .units import format_bytes, parse_bytes


def main():
    cli(prog_name="specmemo-plan")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="specmemo-plan")
def cli():
    """Memory planner, autotuner and runtime for speculative decoding on small GPUs."""


# ----------------------------------------------------------------------------- shared glue


def user_errors(func):
    """SpecMemoError -> one line, exit 1, no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SpecMemoError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def emit(data: dict, as_json: bool, render) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(render())


def positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be positive, got {value}")
    return value


def budget_option(required: bool):
    def convert(ctx, param, value):
        if value is None:
            return None
        try:
            return parse_bytes(value, "budget")
        except SpecMemoError as exc:
            raise click.BadParameter(str(exc)) from None

    return click.option(
        "--budget", callback=convert, required=required,
        help="Memory budget per device: 24GiB, 24GB, 24000MB or bytes.",
    )


def model_options(func):
    """Options every calculator command shares."""
    options = [
        click.option("--target", "-t", required=True, help="Preset name, bundled:NAME, config.json, model folder or .gguf."),
        click.option("--draft", "-d", default=None, help="Draft model, same forms as --target. Omit for plain decoding."),
        click.option("--draft-length", "-k", type=int, default=None, help="Draft tokens per step (default 4 with a draft)."),
        click.option("--batch", "-b", type=int, default=1, show_default=True, callback=positive),
        click.option("--context", "-c", type=int, default=4096, show_default=True, callback=positive,
                     help="Tokens per sequence: prompt + generated."),
        click.option("--dtype", type=click.Choice(WEIGHT_DTYPES), default="fp16", show_default=True, help="Target weights."),
        click.option("--draft-dtype", type=click.Choice(WEIGHT_DTYPES), default=None, help="Draft weights (default: --dtype)."),
        click.option("--kv-dtype", type=click.Choice(KV_DTYPES), default=None, help="KV cache (default: the compute dtype)."),
        click.option("--prefill-chunk", type=int, default=None, callback=positive, help="Prompt tokens per prefill forward (default 512)."),
        click.option("--profile", "-p", "profile_name", default=None, help="Hardware profile (see `devices --profiles`)."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


DEFAULT_DRAFT_LENGTH = 4  # a common default (vLLM's examples, HF assisted generation starts at 5)


def gather_models(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk):
    target_shape = load_shape(target)
    draft_shape = load_shape(draft) if draft else None
    check_pair(target_shape, draft_shape)
    if draft_length is None:
        draft_length = DEFAULT_DRAFT_LENGTH if draft_shape else 0
    knobs = Knobs(
        batch_size=batch, max_context=context, draft_length=draft_length, weight_dtype=dtype,
        draft_weight_dtype=draft_dtype, kv_dtype=kv_dtype, prefill_chunk=prefill_chunk,
    ).validate(has_draft=draft_shape is not None)
    if context > target_shape.max_position_embeddings:
        raise SpecMemoError(
            f"context {context} exceeds the target's {target_shape.max_position_embeddings} positions",
            f"use --context {target_shape.max_position_embeddings} or less",
        )
    if draft_shape and context > draft_shape.max_position_embeddings:
        click.echo(
            f"note: the draft was trained for {draft_shape.max_position_embeddings} positions; "
            "its acceptance may drop past them",
            err=True,
        )
    return target_shape, draft_shape, knobs


def load_profile_or_none(name):
    if not name:
        return None
    from .hardware import load_profile

    return load_profile(name)


def device_spec(profile_name):
    """The plan's device: a named profile, else this machine's first GPU, else its CPU."""
    from .hardware import load_profile, probe_devices, profile_for_device
    from .plan import DeviceSpec

    if profile_name:
        p = load_profile(profile_name)
        return DeviceSpec(kind=p.backend, name=p.name, total_memory_bytes=p.memory_bytes, profile=p.key), p
    devices, _notes = probe_devices(use_torch=False)
    device = next((d for d in devices if d.backend != "cpu"), devices[-1])
    profile = profile_for_device(device) if device.profile_key else None
    spec = DeviceSpec(
        kind=device.backend, name=device.name, total_memory_bytes=device.total_memory_bytes,
        profile=profile.key if profile else None,
    )
    return spec, profile


def latency_for(profile, bandwidth_gbps, dtype):
    """Roofline of the profile, else the bandwidth model (the speedup does not depend on its value)."""
    if profile is not None:
        return roofline_from_profile(profile, dtype)
    return BandwidthLatency(bandwidth_gbps)


def model_rows(label, shape, dtype):
    return [
        [f"{label}", f"{shape.name} ({shape.model_type}, {shape.num_params / 1e6:,.1f}M params, {dtype})"],
    ]


# ----------------------------------------------------------------------------- commands


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def presets(as_json):
    """List the bundled model presets (real config.json files, no weights)."""
    rows = []
    for name in list_presets():
        shape = load_shape(name)
        source = load_preset_config(name).get("_specmemo_source", "")
        rows.append({
            "name": name, "source": source, "model_type": shape.model_type, "num_params": shape.num_params,
            "num_layers": shape.num_layers, "num_kv_heads": shape.num_kv_heads, "head_dim": shape.head_dim,
            "vocab_size": shape.vocab_size, "kv_bytes_per_token_fp16": shape.kv_bytes_per_token_per_element * 2,
        })
    emit({"presets": rows}, as_json, lambda: report.table(
        [[r["name"], r["model_type"], f"{r['num_params'] / 1e6:,.1f}M", r["num_layers"], r["num_kv_heads"],
          r["head_dim"], r["vocab_size"], f"{r['kv_bytes_per_token_fp16'] / 1024:g}"] for r in rows],
        ["preset", "type", "params", "layers", "KV heads", "head_dim", "vocab", "KV KiB/token (fp16)"],
    ))


@cli.command()
@model_options
@user_errors
def estimate(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk, profile_name, as_json):
    """Memory needed, component by component (plain decoding without --draft)."""
    t, d, knobs = gather_models(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk)
    profile = load_profile_or_none(profile_name)
    overhead = profile.runtime_overhead_bytes if profile else 0
    memory = breakdown(t, d, knobs, overhead)
    data = dict(memory.as_dict(), knobs=knobs.__dict__, profile=profile.key if profile else None)
    if profile is not None:
        data["device_memory_bytes"] = profile.memory_bytes
        data["fits"] = memory.total_bytes <= profile.memory_bytes

    def render():
        head = f"{t.name} + {d.name} (k={knobs.draft_length})" if d else f"{t.name} (plain decoding)"
        lines = [f"{head}, batch {batch}, context {context}", report.breakdown_table(memory)]
        if profile is not None:
            verdict = "fits" if data["fits"] else "does NOT fit"
            lines.append(f"{verdict} {profile.name} ({format_bytes(profile.memory_bytes)})")
        return "\n".join(lines)

    emit(data, as_json, render)


def speed_options(func):
    for option in reversed([
        click.option("--acceptance", "-a", type=click.FloatRange(0, 1), default=DEFAULT_ACCEPTANCE, show_default=True,
                     help="Per-token acceptance rate of the draft."),
        click.option("--bandwidth", "bandwidth_gbps", type=float, default=100.0, show_default=True, callback=positive,
                     help="GB/s for the bandwidth latency model when no --profile is given."),
    ]):
        func = option(func)
    return func


@cli.command("min-budget")
@model_options
@speed_options
@click.option("--retain", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Keep at least this share of the best SD throughput (e.g. 0.96) instead of any speedup.")
@user_errors
def min_budget_cmd(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk,
                   profile_name, as_json, acceptance, bandwidth_gbps, retain):
    """Smallest memory at which speculative decoding still beats plain decoding."""
    if not draft:
        raise click.UsageError("min-budget needs --draft: it is the budget under which SD still pays")
    t, d, knobs = gather_models(target, draft, draft_length or 1, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk)
    profile = load_profile_or_none(profile_name)
    overhead = profile.runtime_overhead_bytes if profile else 0
    latency = latency_for(profile, bandwidth_gbps, dtype)
    result = budget_mod.min_budget(t, d, knobs, latency, retain=retain, device_overhead_bytes=overhead, acceptance=acceptance)
    data = {
        "min_budget_bytes": result.total_bytes, "draft_length": result.draft_length,
        "predicted_speedup": result.speed.speedup, "tokens_per_s": result.speed.tokens_per_s,
        "plain_tokens_per_s": result.speed.plain_tokens_per_s, "plain_total_bytes": result.plain_total_bytes,
        "acceptance": acceptance, "retain": retain, "latency_source": latency.source,
        "memory": result.memory.as_dict(),
    }
    emit(data, as_json, lambda: "\n".join([
        report.key_values([
            ["minimum budget", report.describe_bytes(result.total_bytes)],
            ["at draft length k", result.draft_length],
            ["predicted speedup", f"{result.speed.speedup:.2f}x ({latency.source}, acceptance {acceptance})"],
            ["plain decoding needs", report.describe_bytes(result.plain_total_bytes)],
        ]),
        report.breakdown_table(result.memory),
    ]))


@cli.command()
@model_options
@budget_option(required=True)
@user_errors
def fit(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk, profile_name, as_json, budget):
    """What fits a budget: the largest batch, context and draft length, each with the others fixed."""
    t, d, knobs = gather_models(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk)
    profile = load_profile_or_none(profile_name)
    overhead = profile.runtime_overhead_bytes if profile else 0
    budget_mod.check_weights_fit(t, d, knobs, budget, overhead)
    memory = breakdown(t, d, knobs, overhead)
    data = {
        "budget_bytes": budget, "fits": memory.total_bytes <= budget, "total_bytes": memory.total_bytes,
        "headroom_bytes": budget - memory.total_bytes,
        "largest_batch": budget_mod.largest_batch(t, d, knobs, budget, device_overhead_bytes=overhead),
        "largest_context": budget_mod.largest_context(t, d, knobs, budget, device_overhead_bytes=overhead),
        "largest_draft_length": budget_mod.largest_draft_length(t, d, knobs, budget, device_overhead_bytes=overhead),
        "model_max_context": budget_mod.context_limit(t, d),
    }
    emit(data, as_json, lambda: report.key_values([
        ["budget", report.describe_bytes(budget)],
        ["these knobs need", f"{report.describe_bytes(memory.total_bytes)}: {'fits' if data['fits'] else 'does NOT fit'}"],
        [f"largest batch (context {context}, k={knobs.draft_length})", data["largest_batch"] or "none"],
        [f"largest context (batch {batch}, k={knobs.draft_length})",
         f"{data['largest_context'] or 'none'} (models' limit {data['model_max_context']})"],
        [f"largest k (batch {batch}, context {context}, searched to {budget_mod.K_SEARCH_LIMIT})",
         (data["largest_draft_length"] or "none") if d else "- (no draft)"],
    ]))


@cli.command()
@model_options
@budget_option(required=False)
@speed_options
@click.option("--max-new-tokens", type=int, default=256, show_default=True, callback=positive)
@click.option("--sampling", type=click.Choice(["greedy", "sample"]), default="greedy", show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True, callback=positive)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Plan file to write.")
@user_errors
def plan(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk, profile_name,
         as_json, budget, acceptance, bandwidth_gbps, max_new_tokens, sampling, temperature, seed, output):
    """Write a plan file from explicit knobs (no profiling; `tune` measures instead)."""
    from . import plan as plan_mod

    t, d, knobs = gather_models(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk)
    device, profile = device_spec(profile_name)
    overhead = profile.runtime_overhead_bytes if profile else 0
    budget = budget or device.total_memory_bytes
    budget_mod.check_weights_fit(t, d, knobs, budget, overhead)
    latency = latency_for(profile, bandwidth_gbps, dtype)
    speed = predict_speed(t, d, knobs, latency, acceptance=acceptance)
    p = plan_mod.make_plan(
        target, t, draft, d, knobs, device, budget,
        generation=plan_mod.Generation(max_new_tokens=max_new_tokens, sampling=sampling, temperature=temperature, seed=seed),
        device_overhead_bytes=overhead,
        throughput=speed.plan_fields(latency.source, "given" if acceptance != DEFAULT_ACCEPTANCE else "assumed"),
        provenance={"command": "specmemo-plan plan", "argv": sys.argv[1:], "method": "explicit knobs, predicted"},
    )
    path = plan_mod.write_plan(p, output)
    emit({"plan": str(path), **p.to_dict()}, as_json, lambda: "\n".join([
        f"wrote {path}",
        report.key_values([
            ["device", f"{device.name} ({device.kind}, {format_bytes(device.total_memory_bytes)})"],
            ["budget", report.describe_bytes(budget)],
            ["predicted total", report.describe_bytes(p.prediction.memory["total_bytes"])],
            ["predicted tokens/s", f"{speed.tokens_per_s:,.1f} ({speed.speedup:.2f}x plain, {latency.source})"],
        ]),
    ]))


@cli.command()
@click.option("--profiles", "show_profiles", is_flag=True, help="List the bundled hardware profiles instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def devices(show_profiles, as_json):
    """This machine's devices (NVML, amdsmi, torch, /proc) matched to hardware profiles."""
    from .hardware import load_all_profiles, probe_devices

    if show_profiles:
        profiles = load_all_profiles()
        rows = [{"key": k, "name": p.name, "backend": p.backend, "memory_bytes": p.memory_bytes,
                 "memory_bandwidth_gbps": p.memory_bandwidth_gbps, "peak_fp16_tflops": p.peak_fp16_tflops,
                 "peak_bf16_tflops": p.peak_bf16_tflops, "peak_int8_tops": p.peak_int8_tops,
                 "runtime_overhead_bytes": p.runtime_overhead_bytes} for k, p in sorted(profiles.items())]
        emit({"profiles": rows}, as_json, lambda: report.table(
            [[r["key"], r["name"], r["backend"], report.gib(r["memory_bytes"]), r["memory_bandwidth_gbps"],
              r["peak_fp16_tflops"], r["peak_bf16_tflops"] or "-", r["peak_int8_tops"] or "-"] for r in rows],
            ["profile", "name", "backend", "GiB", "GB/s", "fp16 TFLOPS", "bf16 TFLOPS", "int8 TOPS"]))
        return
    found, notes = probe_devices()
    rows = [{"index": d.index, "backend": d.backend, "name": d.name, "total_memory_bytes": d.total_memory_bytes,
             "free_memory_bytes": d.free_memory_bytes, "source": d.source, "profile": d.profile_key,
             "details": d.details} for d in found]
    for note in notes:
        click.echo(f"note: {note}", err=True)
    emit({"devices": rows, "notes": notes}, as_json, lambda: report.table(
        [[r["backend"], r["index"], r["name"], report.gib(r["total_memory_bytes"]),
          report.gib(r["free_memory_bytes"]) if r["free_memory_bytes"] is not None else "-",
          r["profile"] or "-", r["source"]] for r in rows],
        ["backend", "#", "name", "GiB", "free GiB", "profile", "source"]))


@cli.command()
@click.option("--target", "-t", default=None, help="Target model (default: the measured profile's).")
@click.option("--draft", "-d", default=None, help="Draft model (default: the measured profile's).")
@click.option("--profiles", "profile_names", default=None, help="Comma-separated profile keys.")
@click.option("--all", "all_profiles", is_flag=True, help="Every bundled profile.")
@click.option("--measured", "measured_paths", multiple=True, type=click.Path(dir_okay=False),
              help="A measured profile from `specmemo-plan profile` (repeatable): that device's fitted curves and measured acceptance.")
@click.option("--context", "-c", type=int, default=4096, show_default=True, callback=positive)
@click.option("--batch", "-b", type=int, default=1, show_default=True, callback=positive, help="Largest batch to consider.")
@click.option("--dtype", type=click.Choice(WEIGHT_DTYPES), default=None,
              help="Weights dtype  [default: the measured profile's, else fp16]")
@click.option("--kv-dtype", type=click.Choice(KV_DTYPES), default=None)
@click.option("--acceptance", "-a", type=click.FloatRange(0, 1), default=DEFAULT_ACCEPTANCE, show_default=True,
              help="Per-token acceptance for the profiles' rooflines (a --measured device uses its own histogram).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write a PNG chart (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def compare(target, draft, profile_names, all_profiles, measured_paths, context, batch, dtype, kv_dtype, acceptance,
            plot_path, as_json):
    """Which devices run the pair with SD, and how fast: the roofline of each hardware profile, and
    the fitted curves and measured acceptance of each --measured device."""
    from pathlib import Path

    from .autotune import read_measured_profile
    from .compare import compare_devices, compare_measured
    from .hardware import list_profiles, load_profile

    if profile_names and all_profiles:
        raise click.UsageError("give --profiles a,b,c or --all, not both")
    if not (profile_names or all_profiles or measured_paths):
        raise click.UsageError("give --profiles a,b,c, --all, or --measured FILE")
    measured = [read_measured_profile(path) for path in measured_paths]
    if measured:  # the pair and dtype default to the (first) measured one's
        target = target or measured[0].target["ref"]
        draft = draft or (measured[0].draft or {}).get("ref")
        dtype = dtype or measured[0].target["dtype"]
    if not target or not draft:
        raise click.UsageError("give --target and --draft (or --measured FILE, whose pair is used)")
    dtype = dtype or "fp16"
    keys = list_profiles() if all_profiles else [k.strip() for k in (profile_names or "").split(",") if k.strip()]
    profiles = [load_profile(k) for k in keys]
    t, d, knobs = gather_models(target, draft, 1, batch, context, dtype, None, kv_dtype, None)
    verdicts = [compare_measured(m, f"measured:{Path(path).stem}", t, d, knobs) for m, path in zip(measured, measured_paths)]
    verdicts += compare_devices(profiles, t, d, knobs, acceptance)
    if plot_path:
        from .plot import plot_comparison

        plot_comparison(verdicts, plot_path, f"{t.name} + {d.name}, context {context}, batch <= {batch}, {dtype}")
        click.echo(f"wrote {plot_path}", err=True)

    def speed(v):
        return "-" if v is None else f"{v:,.1f}"

    emit({"target": target, "draft": draft, "context": context, "max_batch": batch, "acceptance": acceptance,
          "devices": [v.as_dict() for v in verdicts]}, as_json, lambda: report.table(
        [[v.profile, report.gib(v.memory_bytes), "yes" if v.plain_fits else "no", "yes" if v.sd_fits else "no",
          report.gib(v.min_budget_bytes) if v.min_budget_bytes else "-",
          "-" if v.best_draft_length is None else v.best_draft_length, v.best_batch or "-",
          speed(v.plain_tokens_per_s), speed(v.sd_tokens_per_s),
          "-" if v.speedup is None else f"{v.speedup:.2f}x",
          report.gib(v.headroom_bytes) if v.headroom_bytes is not None else "-", v.note]
         for v in verdicts],
        ["device", "GiB", "plain fits", "SD fits", "SD min budget GiB", "best k", "best batch", "plain tok/s",
         "best tok/s", "speedup", "headroom GiB", "note"]))


# ----------------------------------------------------------------------------- measuring and tuning

DEMO_TARGET = "bundled:smollm2-135m-instruct"
DEMO_DRAFT = "bundled:smollm2-135m-draft"


def measured_options(func):
    for option in reversed([
        click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
                     help="Weights and compute (fp32 is the fast path on most CPUs for small batches)."),
        click.option("--device", default=None, help="torch device: cpu, cuda, cuda:1 (default: cuda if present)."),
        click.option("--acceptance", "-a", type=click.FloatRange(0, 1), default=None,
                     help="Use this per-token acceptance instead of measuring it."),
        click.option("--prompts", "num_prompts", type=click.IntRange(1, 96), default=16, show_default=True,
                     help="Calibration prompts for the acceptance measurement."),
        click.option("--k-max", type=click.IntRange(1, 16), default=8, show_default=True),
        click.option("--repeats", type=click.IntRange(1, 100), default=5, show_default=True, help="Timed runs per point (median)."),
    ]):
        func = option(func)
    return func


def _profile(target, draft, dtype, device, acceptance, num_prompts, k_max, repeats, context, max_batch=8):
    from .tuning import profile_pair

    return profile_pair(target, draft, dtype=dtype, device=device, acceptance=acceptance, num_prompts=num_prompts,
                        k_max=k_max, max_context=context, repeats=repeats, max_batch=max_batch)


def fit_rows(measured):
    """The fitted curves: floor, context terms, and g(B*n) at its knots (ms)."""
    from .autotune import LatencyFit

    rows = []
    for role, data in (("target", measured.target_fit), ("draft", measured.draft_fit)):
        if data:
            fit = LatencyFit.from_dict(data)
            c0, c2, c3 = fit.coefficients[0], *fit.coefficients[-2:]
            g = " ".join(f"{x}:{fit.g_ms(x):.3g}" for x in (fit.knots or (1, 8, 64)))
            rows.append([role, f"{c0:.4g}", g, f"{c2:.3g}", f"{c3:.3g}", f"{fit.mean_abs_pct_error:.1f}%"])
    return report.table(rows, ["model", "c0 ms", "g(B*n) ms at B*n", "c2 ms/(B*S)", "c3 ms/(B*n*S)", "fit error"])


@cli.command()
@click.option("--target", "-t", required=True)
@click.option("--draft", "-d", default=None)
@measured_options
@click.option("--context", "-c", type=int, default=2048, show_default=True, callback=positive, help="Longest context to profile.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=8, show_default=True,
              help="Largest batch in the latency grid (powers of two up to it, and it).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Measured profile (JSON) to write.")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def profile(target, draft, dtype, device, acceptance, num_prompts, k_max, repeats, context, max_batch, output, as_json):
    """Measure forward latencies and the pair's acceptance on this device; fit t(B, n, S)."""
    from dataclasses import asdict

    from .tuning import save_measured

    measured = _profile(target, draft, dtype, device, acceptance, num_prompts, k_max, repeats, context, max_batch)
    save_measured(measured, output)
    emit(asdict(measured), as_json, lambda: "\n".join([f"wrote {output}", fit_rows(measured)]))


@cli.command()
@click.option("--measured", "measured_path", type=click.Path(dir_okay=False), default=None,
              help="A measured profile from `profile` (else profile now, with --target/--draft).")
@click.option("--target", "-t", default=None)
@click.option("--draft", "-d", default=None)
@measured_options
@budget_option(required=False)
@click.option("--context", "-c", type=int, default=2048, show_default=True, callback=positive)
@click.option("--max-new-tokens", type=int, default=256, show_default=True, callback=positive)
@click.option("--max-batch", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--retain", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Smallest memory keeping this share of the best throughput (e.g. 0.96).")
@click.option("--verify", is_flag=True, help="Run the engine on the plan; write measured beside predicted.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@user_errors
def tune(measured_path, target, draft, dtype, device, acceptance, num_prompts, k_max, repeats, budget, context,
         max_new_tokens, max_batch, retain, verify, output, as_json):
    """Pick k, batch and prefill chunk for the best predicted throughput inside --budget; write the plan."""
    from .autotune import read_measured_profile
    from .tuning import tune as tune_plan
    from .tuning import verify as verify_plan
    from .tuning import write_verified

    if measured_path:
        measured = read_measured_profile(measured_path)
    elif target:
        measured = _profile(target, draft, dtype, device, acceptance, num_prompts, k_max, repeats, context)
    else:
        raise click.UsageError("give --measured FILE, or --target (and --draft) to profile now")
    p, info = tune_plan(measured, budget, context, max_new_tokens, retain, k_max, max_batch)
    from .plan import write_plan

    write_plan(p, output)
    verified = None
    if verify:
        verified = verify_plan(p, measured, device=device)
        p = write_verified(p, verified, output)
    emit({"plan": str(output), **p.to_dict()}, as_json, lambda: render_tune(p, info, verified))


def render_tune(p, info, verified) -> str:
    result = info["result"]
    rows = [[c.knobs.draft_length, c.knobs.batch_size, c.knobs.chunk, report.gib(c.total_bytes),
             f"{c.tokens_per_s:,.1f}", f"{c.speed.speedup:.2f}x"] for c in result.frontier]
    lines = [f"wrote plan: k={p.knobs.draft_length}, batch {p.knobs.batch_size}, prefill chunk {p.knobs.chunk}, "
             f"context {p.knobs.max_context}, predicted {p.prediction.tokens_per_s:,.1f} tokens/s "
             f"({p.prediction.speedup:.2f}x plain), {report.describe_bytes(p.prediction.memory['total_bytes'])}"]
    lines += [f"note: {n}" for n in info["notes"]]
    lines.append(f"searched {result.evaluated} configurations in {info['search_seconds'] * 1e3:.0f} ms; memory/throughput frontier:")
    lines.append(report.table(rows, ["k", "batch", "chunk", "GiB", "tokens/s", "vs plain"]))
    if verified:
        lines.append(render_verify(verified))
    return "\n".join(lines)


def render_verify(v) -> str:
    sd = v["engine"]["stats"]
    rows = [["engine (plan)", f"{sd['decode_tokens_per_s']:,.1f}",
             f"{v['predicted_at_run_context']['tokens_per_s']:,.1f}" if "predicted_at_run_context" in v else "-",
             "-" if sd.get("acceptance_rate") is None else f"{sd['acceptance_rate']:.3f}"]]
    if "plain" in v:
        rows.append(["plain decoding", f"{v['plain']['stats']['decode_tokens_per_s']:,.1f}",
                     f"{v['predicted_at_run_context']['plain_tokens_per_s']:,.1f}" if "predicted_at_run_context" in v else "-", "-"])
    mem = v["engine"]["memory"]
    comp_rows = [[name, report.gib(mem["predicted"]["components"][name]),
                  "-" if mem["measured"]["components"].get(name) is None else report.gib(mem["measured"]["components"][name]),
                  "-" if mem["measured"]["error_percent"].get(name) is None else f"{mem['measured']['error_percent'][name]:+.1f}%"]
                 for name in mem["predicted"]["components"]]
    lines = [f"verified on {v['prompts']} calibration prompts, up to {v['max_new_tokens']} new tokens each:",
             report.table(rows, ["run", "measured tok/s (decode)", "predicted tok/s", "acceptance"])]
    if "measured_speedup" in v:
        verdict = "pays" if v["measured_speedup"] > 1 else "does NOT pay"
        lines.append(f"speculative decoding {verdict} here: {v['measured_speedup']:.2f}x plain decoding (measured)")
    lines.append(report.table(comp_rows, ["component", "predicted GiB", "measured GiB", "error"]))
    if v.get("worst_case"):
        w = v["worst_case"]
        measured = "-" if w["measured_activation_bytes"] is None else report.gib(w["measured_activation_bytes"])
        error = "" if w["error_percent"] is None else f" ({w['error_percent']:+.1f}%)"
        lines.append(f"activations with the context filled ({w['batch']} x {w['prompt_tokens']} prompt tokens): "
                     f"predicted {report.gib(w['predicted_activation_bytes'])} GiB, measured {measured} GiB{error}")
    return "\n".join(lines)


@cli.command()
@click.option("--target", "-t", default=DEMO_TARGET, show_default=True)
@click.option("--draft", "-d", default=DEMO_DRAFT, show_default=True)
@click.option("--budget", default="2GiB", show_default=True, help="Memory budget for the plan.")
@click.option("--context", "-c", type=int, default=1024, show_default=True, callback=positive)
@click.option("--output", "-o", default="plan.json", show_default=True, type=click.Path(dir_okay=False))
@click.option("--device", default=None)
@click.option("--prompts", "num_prompts", type=click.IntRange(1, 96), default=8, show_default=True,
              help="Calibration prompts for the acceptance measurement.")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def demo(target, draft, budget, context, output, device, num_prompts, as_json):
    """The whole chain on the bundled pair: profile, tune, write the plan, generate, compare."""
    from .tuning import log
    from .tuning import tune as tune_plan
    from .tuning import verify as verify_plan
    from .tuning import write_verified

    budget_bytes = parse_bytes(budget, "budget")
    from .tuning import profile_pair

    log(f"1/3 profiling {target} + {draft} on this device (a quick grid; `profile` measures a fuller one)")
    measured = profile_pair(target, draft, dtype="fp32", device=device, num_prompts=num_prompts, k_max=6,
                            max_context=context, repeats=3, quick=True, acceptance_new_tokens=32)
    log("2/3 tuning")
    p, info = tune_plan(measured, budget_bytes, context, max_new_tokens=128, k_max=6, max_batch=4)
    log("3/3 generating with the engine (the plan, then plain decoding)")
    verified = verify_plan(p, measured, num_prompts=4, max_new_tokens=32, device=device)
    p = write_verified(p, verified, output)
    emit({"plan": str(output), **p.to_dict()}, as_json, lambda: "\n".join([fit_rows(measured), render_tune(p, info, verified)]))



# ----------------------------------------------------------------------------- several devices, export (split.py, export.py)
#
# `--devices N` (and `--split-policy`) are added to estimate, min-budget, fit and plan: N = 1 runs the command as
# it was; N > 1 splits the target layer-wise over N devices of the --profile's kind (or the local probe's GPUs).


def _n_devices(profile_name, num_devices):
    """(DeviceSpec, profile or None, memory of one device) for N devices: N of the --profile, else the first N
    GPUs the local probe finds (their smallest memory)."""
    from .hardware import load_profile, probe_devices, profile_for_device
    from .plan import DeviceSpec

    if profile_name:
        p = load_profile(profile_name)
        spec = DeviceSpec(kind=p.backend, name=p.name, total_memory_bytes=p.memory_bytes, profile=p.key, count=num_devices)
        return spec, p, p.memory_bytes
    found, _notes = probe_devices(use_torch=False)
    gpus = [d for d in found if d.backend != "cpu"]
    if len(gpus) < num_devices:
        raise SpecMemoError(
            f"--devices {num_devices} needs {num_devices} GPUs; this machine shows {len(gpus)}",
            "name the device kind with --profile (for example --profile mi250-gcd or --profile a100-40gb)",
        )
    gpus = gpus[:num_devices]
    profile = profile_for_device(gpus[0]) if gpus[0].profile_key else None
    memory = min(d.total_memory_bytes for d in gpus)
    spec = DeviceSpec(kind=gpus[0].backend, name=gpus[0].name, total_memory_bytes=memory,
                      profile=profile.key if profile else None, count=num_devices)
    return spec, profile, memory


def _split_rows(split):
    rows = []
    for s in split.devices:
        c = s.memory.components
        holds = ", ".join(name for name, flag in (("embedding", s.holds_embedding), ("lm_head", s.holds_lm_head),
                                                  ("draft", s.holds_draft)) if flag)
        rows.append([s.index, f"{s.layers[0]}-{s.layers[1]}" if s.layers else "-",
                     report.gib(c["target_weights"] + c["draft_weights"]), report.gib(c["target_kv"] + c["draft_kv"]),
                     report.gib(c["candidate_buffers"]), report.gib(c["activations"]), report.gib(c["runtime_overhead"]),
                     report.gib(s.memory.total_bytes), report.gib(s.budget_bytes), holds or "-"])
    return report.table(rows, ["device", "layers", "weights GiB", "KV GiB", "buffers GiB", "activations GiB",
                               "overhead GiB", "total GiB", "budget GiB", "holds"])


def _split_summary(split, single_total):
    return (f"{split.used_devices} of {len(split.devices)} devices used ({split.policy}); all devices together "
            f"{format_bytes(split.total.total_bytes)} = one-device {format_bytes(single_total)} + per-device duplicates "
            f"(runtime overhead {format_bytes(split.duplicates['runtime_overhead'])}, activations "
            f"{format_bytes(split.duplicates['activations'])}); {split.hops} hop(s) per forward")


def _with_devices(command, handler, help_extra=""):
    """Give an existing command --devices and --split-policy; N = 1 calls the command unchanged."""
    from .split import DEFAULT_POLICY, POLICIES

    command.params.append(click.Option(
        ["--devices", "num_devices"], type=int, default=1, show_default=True, callback=positive,
        help="Split the target layer-wise over N devices of the --profile's kind (or this machine's GPUs)." + help_extra))
    command.params.append(click.Option(
        ["--split-policy"], type=click.Choice(POLICIES), default=DEFAULT_POLICY, show_default=True,
        help="With --devices: spread layers over every device (balanced) or fill device 0 first (sequential)."))
    original = command.callback

    @functools.wraps(original)
    def callback(*args, num_devices=1, split_policy=DEFAULT_POLICY, **kwargs):
        if num_devices == 1:
            return original(*args, **kwargs)
        return user_errors(handler)(num_devices=num_devices, split_policy=split_policy, **kwargs)

    command.callback = callback


def _estimate_devices(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk,
                      profile_name, as_json, num_devices, split_policy):
    from .split import split_layers

    t, d, knobs = gather_models(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk)
    spec, profile, memory = _n_devices(profile_name, num_devices)
    overhead = profile.runtime_overhead_bytes if profile else 0
    single = breakdown(t, d, knobs, overhead)
    split = split_layers(t, d, knobs, [memory] * num_devices, overhead, split_policy)
    data = dict(split.total.as_dict(), knobs=knobs.__dict__, profile=spec.profile, device_memory_bytes=memory,
                single_device_total_bytes=single.total_bytes, fits=True, split=split.as_dict())
    head = f"{t.name} + {d.name} (k={knobs.draft_length})" if d else f"{t.name} (plain decoding)"
    emit(data, as_json, lambda: "\n".join([
        f"{head}, batch {batch}, context {context}, on {num_devices} x {spec.name} ({format_bytes(memory)} each)",
        _split_rows(split), _split_summary(split, single.total_bytes)]))


def _min_budget_devices(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk,
                        profile_name, as_json, acceptance, bandwidth_gbps, retain, num_devices, split_policy):
    from .split import min_budget_split

    if not draft:
        raise click.UsageError("min-budget needs --draft: it is the budget under which SD still pays")
    t, d, knobs = gather_models(target, draft, draft_length or 1, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk)
    spec, profile, _memory = _n_devices(profile_name, num_devices)
    overhead = profile.runtime_overhead_bytes if profile else 0
    latency = latency_for(profile, bandwidth_gbps, dtype)
    link = profile.interconnect_bandwidth_gbps if profile else None
    budget, k, split, speed = min_budget_split(t, d, knobs, latency, num_devices, overhead, link, retain,
                                               acceptance=acceptance)
    s = speed.speed
    data = {"min_budget_bytes_per_device": budget, "num_devices": num_devices, "draft_length": k,
            "predicted_speedup": s.speedup, "tokens_per_s": s.tokens_per_s, "plain_tokens_per_s": s.plain_tokens_per_s,
            "acceptance": acceptance, "retain": retain, "latency_source": latency.source,
            "interconnect_gbps": link, "split": split.as_dict()}
    emit(data, as_json, lambda: "\n".join([
        report.key_values([
            ["minimum budget per device", f"{report.describe_bytes(budget)} x {num_devices} devices"],
            ["at draft length k", k],
            ["predicted speedup", f"{s.speedup:.2f}x ({latency.source}, acceptance {acceptance})"],
            ["predicted tokens/s", f"{s.tokens_per_s:,.1f} (plain {s.plain_tokens_per_s:,.1f})"],
        ]),
        _split_rows(split)]))


def _fit_devices(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk,
                 profile_name, as_json, budget, num_devices, split_policy):
    from .split import fits_split, largest_split, split_layers

    t, d, knobs = gather_models(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk)
    spec, profile, _memory = _n_devices(profile_name, num_devices)
    overhead = profile.runtime_overhead_bytes if profile else 0
    budgets = [budget] * num_devices
    if not fits_split(t, d, replace(knobs, batch_size=1, max_context=1), budgets, overhead):
        raise SpecMemoError(
            f"{num_devices} x {format_bytes(budget)} cannot hold the weights, in whole decoder layers, with each "
            "device's runtime overhead",
            "raise --budget or --devices, or use a smaller --dtype (int8, int4)",
        )
    fits = fits_split(t, d, knobs, budgets, overhead)
    split = split_layers(t, d, knobs, budgets, overhead, split_policy) if fits else None
    data = {
        "budget_bytes": budget, "num_devices": num_devices, "fits": fits,
        "total_bytes": split.total.total_bytes if split else None,
        "largest_batch": largest_split("batch_size", t, d, knobs, budgets, overhead),
        "largest_context": largest_split("max_context", t, d, knobs, budgets, overhead),
        "largest_draft_length": largest_split("draft_length", t, d, knobs, budgets, overhead, high=budget_mod.K_SEARCH_LIMIT),
        "model_max_context": budget_mod.context_limit(t, d),
        "split": split.as_dict() if split else None,
    }
    lines = [report.key_values([
        ["budget", f"{report.describe_bytes(budget)} per device x {num_devices}"],
        ["these knobs", "fit" if fits else "do NOT fit"],
        [f"largest batch (context {context}, k={knobs.draft_length})", data["largest_batch"] or "none"],
        [f"largest context (batch {batch}, k={knobs.draft_length})",
         f"{data['largest_context'] or 'none'} (models' limit {data['model_max_context']})"],
        [f"largest k (batch {batch}, context {context}, searched to {budget_mod.K_SEARCH_LIMIT})",
         (data["largest_draft_length"] or "none") if d else "- (no draft)"],
    ])]
    if split:
        lines.append(_split_rows(split))
    emit(data, as_json, lambda: "\n".join(lines))


def _plan_devices(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk, profile_name,
                  as_json, budget, acceptance, bandwidth_gbps, max_new_tokens, sampling, temperature, seed, output,
                  num_devices, split_policy):
    from . import plan as plan_mod
    from .split import make_split_plan, predict_split_speed, split_layers

    t, d, knobs = gather_models(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk)
    spec, profile, memory = _n_devices(profile_name, num_devices)
    overhead = profile.runtime_overhead_bytes if profile else 0
    budgets = [budget or memory] * num_devices
    latency = latency_for(profile, bandwidth_gbps, dtype)
    link = profile.interconnect_bandwidth_gbps if profile else None
    split = split_layers(t, d, knobs, budgets, overhead, split_policy)
    speed = predict_split_speed(split, t, d, knobs, latency, link, acceptance).speed
    p, split = make_split_plan(
        target, t, draft, d, knobs, spec, budgets,
        plan_mod.Generation(max_new_tokens=max_new_tokens, sampling=sampling, temperature=temperature, seed=seed),
        overhead, throughput=speed.plan_fields(latency.source, "given" if acceptance != DEFAULT_ACCEPTANCE else "assumed"),
        provenance={"command": "specmemo-plan plan", "argv": sys.argv[1:], "method": "explicit knobs, predicted"},
        policy=split_policy,
    )
    path = plan_mod.write_plan(p, output)
    single = breakdown(t, d, knobs, overhead)
    emit({"plan": str(path), **p.to_dict()}, as_json, lambda: "\n".join([
        f"wrote {path}",
        report.key_values([
            ["devices", f"{num_devices} x {spec.name} ({spec.kind}, {format_bytes(spec.total_memory_bytes)} each)"],
            ["budget per device", report.describe_bytes(budgets[0])],
            ["predicted total, all devices", report.describe_bytes(split.total.total_bytes)],
            ["predicted tokens/s", f"{speed.tokens_per_s:,.1f} ({speed.speedup:.2f}x plain, {latency.source}"
                                   + (f", {link:g} GB/s between devices)" if link else ")")],
        ]),
        _split_rows(split), _split_summary(split, single.total_bytes)]))


_with_devices(cli.commands["estimate"], _estimate_devices)
_with_devices(cli.commands["min-budget"], _min_budget_devices)
_with_devices(cli.commands["fit"], _fit_devices, " --budget is per device.")
_with_devices(cli.commands["plan"], _plan_devices, " Writes per_device into the plan; --budget is per device.")


@cli.command("export")
@click.argument("plan_path", type=click.Path(dir_okay=False))
@click.option("--to", "engine", required=True, help="vllm, sglang, llama.cpp, trtllm or hf.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def export_cmd(plan_path, engine, as_json):
    """Print the settings that reproduce a plan in another engine, and what that engine cannot express."""
    from .export import export_plan
    from .plan import read_plan

    result = export_plan(read_plan(plan_path), engine)

    def render():
        lines = [f"# {result.engine_version} (option names from {', '.join(result.docs)})", result.command]
        if result.unsupported:
            lines += ["", f"not expressible in {result.engine}:"] + [f"  - {u}" for u in result.unsupported]
        if result.notes:
            lines += ["", "notes:"] + [f"  - {n}" for n in result.notes]
        return "\n".join(lines)

    emit(result.as_dict(), as_json, render)

if __name__ == "__main__":
    main()
