"""`devices` (this machine and the bundled profiles) and `compare` (which device runs a pair, how fast)."""

from __future__ import annotations

from pathlib import Path

import click

from ..memory import KV_DTYPES, WEIGHT_DTYPES
from ..render import planner as render
from ..throughput import DEFAULT_ACCEPTANCE
from .calculator import gather
from .options import emit, json_option, positive, user_errors


@click.command()
@click.option("--profiles", "show_profiles", is_flag=True, help="List the bundled hardware profiles instead.")
@json_option
@user_errors
def devices(show_profiles, as_json):
    """This machine's devices (NVML, amdsmi, torch, /proc) matched to hardware profiles."""
    from ..hardware import load_all_profiles, probe_devices

    if show_profiles:
        rows = [{"key": k, "name": p.name, "backend": p.backend, "memory_bytes": p.memory_bytes,
                 "memory_bandwidth_gbps": p.memory_bandwidth_gbps, "peak_fp16_tflops": p.peak_fp16_tflops,
                 "peak_bf16_tflops": p.peak_bf16_tflops, "peak_int8_tops": p.peak_int8_tops,
                 "runtime_overhead_bytes": p.runtime_overhead_bytes} for k, p in sorted(load_all_profiles().items())]
        emit({"profiles": rows}, as_json, lambda: render.profiles(rows))
        return
    found, notes = probe_devices()
    rows = [{"index": d.index, "backend": d.backend, "name": d.name, "total_memory_bytes": d.total_memory_bytes,
             "free_memory_bytes": d.free_memory_bytes, "source": d.source, "profile": d.profile_key,
             "details": d.details} for d in found]
    for note in notes:
        click.echo(f"note: {note}", err=True)
    emit({"devices": rows, "notes": notes}, as_json, lambda: render.probed(rows))


@click.command()
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
@json_option
@user_errors
def compare(target, draft, profile_names, all_profiles, measured_paths, context, batch, dtype, kv_dtype, acceptance,
            plot_path, as_json):
    """Which devices run the pair with SD, and how fast: the roofline of each hardware profile, and
    the fitted curves and measured acceptance of each --measured device."""
    from ..autotune import read_measured_profile
    from ..compare import compare_devices, compare_measured
    from ..hardware import list_profiles, load_profile

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
    s = gather(target, draft, 1, batch, context, dtype, None, kv_dtype, None, None)
    verdicts = [compare_measured(m, f"measured:{Path(path).stem}", s.target, s.draft, s.knobs)
                for m, path in zip(measured, measured_paths)]
    verdicts += compare_devices(profiles, s.target, s.draft, s.knobs, acceptance)
    if plot_path:
        from ..plot import plot_comparison

        plot_comparison(verdicts, plot_path, f"{s.target.name} + {s.draft.name}, context {context}, batch <= {batch}, {dtype}")
        click.echo(f"wrote {plot_path}", err=True)
    emit({"target": target, "draft": draft, "context": context, "max_batch": batch, "acceptance": acceptance,
          "devices": [v.as_dict() for v in verdicts]}, as_json, lambda: render.compare(verdicts))
