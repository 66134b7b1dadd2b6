"""`devices` (this machine and the bundled profiles) and `compare` (which device runs a pair, how fast)."""

from __future__ import annotations

from pathlib import Path

import click

from ..memory import WEIGHT_DTYPES
from ..render import planner as render
from ..errors import SpecMemoError
from ..throughput import DEFAULT_ACCEPTANCE
from .calculator import acceptance_given, gather
from .engine_options import check_one_gpu_path, engine_flags, engine_options
from .options import KV_DTYPE_HELP, SHARE, emit, kv_dtype, json_option, positive, user_errors


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
@click.option("--profiles", "profile_names", default=None,
              help="Comma-separated hardware profile keys (see `devices --profiles`).")
@click.option("--all", "all_profiles", is_flag=True, help="Every bundled profile.")
@click.option("--measured", "measured_paths", multiple=True, type=click.Path(dir_okay=False),
              help="A measured profile from `specmemo-plan profile` (repeatable): that device's fitted curves and measured acceptance.")
@click.option("--context", "-c", type=int, default=4096, show_default=True, callback=positive,
              help="Tokens per sequence: prompt + generated.")
@click.option("--batch", "-b", type=int, default=1, show_default=True, callback=positive, help="Largest batch to consider.")
@click.option("--dtype", type=click.Choice(WEIGHT_DTYPES), default=None,
              help="Weights dtype  [default: the measured profile's, else fp16]")
@click.option("--kv-dtype", default=None, callback=kv_dtype, help=KV_DTYPE_HELP)
@click.option("--acceptance", "-a", type=SHARE, default=None,
              help="Per-token acceptance for the profiles' rooflines (a --measured device uses its own histogram)  "
                   f"[default: {DEFAULT_ACCEPTANCE}, assumed]")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a chart; the extension picks the format: .png, .svg, .pdf (needs matplotlib).")
@json_option
@engine_options
@user_errors
def compare(target, draft, profile_names, all_profiles, measured_paths, context, batch, dtype, kv_dtype, acceptance,
            plot_path, as_json, **engine_args):
    """Which devices run the pair with SD, and how fast: the roofline of each hardware profile, and
    the fitted curves and measured acceptance of each --measured device. With --engine, whether that engine
    starts each device's best configuration, and its KV pool there."""
    from ..autotune import read_measured_profile
    from ..compare import compare_devices, compare_measured
    from ..hardware import list_profiles, load_profile
    from ..quantities import acceptance_rate

    if profile_names is not None and all_profiles:
        raise click.UsageError("give --profiles a,b,c or --all, not both")
    if not (profile_names is not None or all_profiles or measured_paths):
        raise click.UsageError("give --profiles a,b,c, --all, or --measured FILE")
    keys = list_profiles() if all_profiles else [k.strip() for k in (profile_names or "").split(",") if k.strip()]
    if profile_names is not None and not keys:
        raise SpecMemoError(f"--profiles {profile_names!r} names no profile", "give keys like rtx-4090,a100-40gb "
                            "(`specmemo-plan devices --profiles` lists them)")
    if plot_path:  # before the work: matplotlib, a format it writes, a folder that takes the file
        from ..plot import check_plot_path

        check_plot_path(plot_path, inputs=measured_paths)
    measured = [read_measured_profile(path) for path in measured_paths]
    if measured:  # the pair and dtype default to the (first) measured one's
        target = target or measured[0].target["ref"]
        draft = draft or (measured[0].draft or {}).get("ref")
        dtype = dtype or measured[0].target["dtype"]
    if not target or not draft:
        raise click.UsageError("give --target and --draft (or --measured FILE, whose pair is used)")
    dtype = dtype or "fp16"
    profiles = [load_profile(k) for k in dict.fromkeys(keys)]
    acceptance, acceptance_source = acceptance_given(acceptance)
    s = gather(target, draft, 1, batch, context, dtype, None, kv_dtype, None, None)
    verdicts = [compare_measured(m, f"measured:{Path(path).stem}", s.target, s.draft, s.knobs)
                for m, path in zip(measured, measured_paths)]
    verdicts += compare_devices(profiles, s.target, s.draft, s.knobs, acceptance)
    engine = check_one_gpu_path(engine_args, 1)
    if engine is not None:  # each device's own memory and context size (profile or measured)
        from ..compare import with_engine

        overheads = [m.runtime_overhead_bytes for m in measured] + [p.runtime_overhead_bytes for p in profiles]
        verdicts = [with_engine(v, engine, engine_flags(engine_args), s.target, s.draft, s.knobs, overhead,
                                engine_args["tensor_parallel_size"]) for v, overhead in zip(verdicts, overheads)]
    if plot_path:
        from ..plot import plot_comparison

        plot_comparison(verdicts, plot_path, f"{s.target.name} + {s.draft.name}, context {context}, batch <= {batch}, {dtype}",
                        inputs=measured_paths)
        click.echo(f"wrote {plot_path}", err=True)
    sources = []  # where each row's latency and acceptance come from
    if profiles:
        sources.append(f"profiles: latency from each profile's roofline (spec-sheet peaks, not measured), at "
                       f"{render.acceptance_words(acceptance, acceptance_source, 'give --acceptance or --measured')}")
    for m, path in zip(measured, measured_paths):
        a = acceptance_rate(m.acceptance_histogram) if m.acceptance_histogram else None
        how = "no draft measured" if a is None else f"at the {m.acceptance_source} acceptance {a:.3f}"
        sources.append(f"measured:{Path(path).stem}: latency fitted to {m.device.get('name', 'the device')}'s "
                       f"measurements, {how} (its histogram)")
    emit({"target": target, "draft": draft, "context": context, "max_batch": batch, "acceptance": acceptance,
          "acceptance_source": acceptance_source, "devices": [v.as_dict() for v in verdicts]}, as_json,
         lambda: render.compare(verdicts, sources) + render.compare_engine(verdicts))
