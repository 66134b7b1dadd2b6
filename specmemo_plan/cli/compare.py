"""`compare`: which devices run a target with speculative decoding, and how fast.

One draft model (--draft, or the --measured profile's): per device, whether it fits, SD's minimum budget, the
best k and batch inside its memory, tokens/s plain vs SD (compare.DeviceVerdict), as before methods existed.
Several draft methods (--draft-method, repeated or `all`, as min-budget and fit take it; or --measured profiles
of methods other than a draft model): per device and method, side by side, the memory of its fastest
configuration, its predicted tokens/s, its speedup over plain decoding and the cheapest budget at which it pays
(compare.DeviceMethods). A --measured profile is weighed for the method it measured; the profiles of one
device (its name and memory) are one device, their methods side by side.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import SpecMemoError
from ..memory import WEIGHT_DTYPES
from ..render import planner as render
from ..throughput import DEFAULT_ACCEPTANCE
from .calculator import acceptance_given, gather
from .engine_options import check_one_gpu_path, engine_flags, engine_options
from .methods import method_specs
from .options import KV_DTYPE_HELP, SHARE, emit, json_option, kv_dtype, positive, user_errors


@click.command()
@click.option("--target", "-t", default=None, help="Target model (default: the measured profile's).")
@click.option("--draft", "-d", default=None, help="Draft model (default: the measured profile's).")
@click.option("--draft-method", "draft_method", multiple=True, metavar="METHOD[=DRAFT]",
              help="Weigh draft methods side by side: draft-model, eagle, eagle3, medusa, mtp, ngram or none, "
                   "repeated (METHOD=DRAFT each) or `all`, as min-budget and fit take it.")
@click.option("--head-embedding", type=click.Choice(["shared", "copied"]), default=None,
              help="With --draft-method: a head's embedding shared with the target (default) or its own copy.")
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
                   f"[default: {DEFAULT_ACCEPTANCE} for a draft model (assumed), each method's own with --draft-method]")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a chart; the extension picks the format: .png, .svg, .pdf (needs matplotlib).")
@json_option
@engine_options
@user_errors
def compare(target, draft, draft_method, head_embedding, profile_names, all_profiles, measured_paths, context, batch,
            dtype, kv_dtype, acceptance, plot_path, as_json, **engine_args):
    """Which devices run the pair with SD, and how fast: the roofline of each hardware profile, and
    the fitted curves and measured acceptance of each --measured device. With --draft-method, every method
    given side by side per device. With --engine, whether that engine starts each device's best configuration
    (one draft model), and its KV pool there."""
    from ..autotune import read_measured_profile
    from ..hardware import list_profiles

    if profile_names is not None and all_profiles:
        raise click.UsageError("give --profiles a,b,c or --all, not both")
    if not (profile_names is not None or all_profiles or measured_paths):
        raise click.UsageError("give --profiles a,b,c, --all, or --measured FILE")
    keys = list_profiles() if all_profiles else [k.strip() for k in (profile_names or "").split(",") if k.strip()]
    if profile_names is not None and not keys:
        raise SpecMemoError(f"--profiles {profile_names!r} names no profile", "give keys like rtx-4090,a100-40gb "
                            "(`specmemo-plan devices --profiles` lists them)")
    if draft_method:
        _refuse_one_method_options(plot_path, engine_args)
    if plot_path:  # before the work: matplotlib, a format it writes, a folder that takes the file
        from ..plot import check_plot_path

        check_plot_path(plot_path, inputs=measured_paths)
    measured = [read_measured_profile(path) for path in measured_paths]
    if draft_method or any(m.draft_method != "draft-model" for m in measured):
        _refuse_one_method_options(plot_path, engine_args)
        return _compare_methods(target, draft, draft_method, head_embedding, keys, measured, measured_paths, context,
                                batch, dtype, kv_dtype, acceptance, as_json)
    _compare_one(target, draft, keys, measured, measured_paths, context, batch, dtype, kv_dtype, acceptance, plot_path,
                 as_json, engine_args)


def _refuse_one_method_options(plot_path, engine_args) -> None:
    """--plot and --engine weigh one draft model per device."""
    if plot_path:
        raise SpecMemoError("--plot draws one draft model per device, not several draft methods",
                            "drop --plot, or compare one draft model (no --draft-method)")
    if check_one_gpu_path(engine_args, 1) is not None:
        raise SpecMemoError(f"--engine {engine_args['engine']} weighs one draft model per device, not several draft methods",
                            "drop --engine, or compare one draft model (no --draft-method)")


def _compare_one(target, draft, keys, measured, measured_paths, context, batch, dtype, kv_dtype, acceptance, plot_path,
                 as_json, engine_args) -> None:
    """One draft model on every device (compare.DeviceVerdict rows)."""
    from ..compare import compare_devices, compare_measured
    from ..hardware import load_profile
    from ..quantities import acceptance_rate

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


def _method_setups(specs, target, target_shape, batch, context, dtype, kv_dtype, head_embedding, acceptance) -> list:
    """compare.MethodSetup per --draft-method (a method that cannot be built here: its reason, on every row)."""
    from ..compare import MethodSetup

    setups = []
    for method, ref in specs:
        try:
            s = gather(target, ref, None, batch, context, dtype, None, kv_dtype, None, None, draft_method=method,
                       head_embedding=head_embedding, target_shape=target_shape)
        except SpecMemoError as exc:
            setups.append(MethodSetup(method or "draft-model", ref, None, None, None, "-", error=str(exc)))
            continue
        a, source = acceptance_given(acceptance, s.method)
        setups.append(MethodSetup(s.method, s.draft_ref, s.draft, s.knobs, a, source))
    return setups


def _compare_methods(target, draft, draft_method, head_embedding, keys, measured, measured_paths, context, batch, dtype,
                     kv_dtype, acceptance, as_json) -> None:
    """Every draft method on every device (compare.DeviceMethods rows)."""
    from ..compare import compare_device_methods, compare_measured_methods
    from ..hardware import load_profile
    from ..models import load_shape

    target = target or (measured[0].target["ref"] if measured else None)
    if not target:
        raise click.UsageError("give --target (or --measured FILE, whose target is used)")
    dtype = dtype or (measured[0].target["dtype"] if measured else "fp16")
    specs = method_specs(draft_method, draft) if draft_method else ([(None, draft)] if draft else [])
    if keys and not specs:
        raise click.UsageError("give --draft-method (or --draft) for the --profiles rows")
    target_shape = load_shape(target)
    base = gather(target, None, 0, batch, context, dtype, None, kv_dtype, None, None, target_shape=target_shape).knobs
    setups = _method_setups(specs, target, target_shape, batch, context, dtype, kv_dtype, head_embedding, acceptance)
    groups: dict = {}  # the profiles of one device (name, memory, hardware profile): its methods side by side
    for m, path in zip(measured, measured_paths):
        key = (m.device.get("name"), m.device["total_memory_bytes"], m.device.get("profile"))
        groups.setdefault(key, []).append((m, f"measured:{Path(path).stem}"))
    devices = [compare_measured_methods([m for m, _ in group], [label for _, label in group], target_shape, base)
               for group in groups.values()]
    devices += [compare_device_methods(load_profile(k), target_shape, setups, base) for k in dict.fromkeys(keys)]
    sources = []
    if keys:
        sources.append("profiles: latency from each profile's roofline (spec-sheet peaks, not measured), at each "
                       "method's acceptance above (give --acceptance, or --measured)")
    for m, path in zip(measured, measured_paths):
        sources.append(f"measured:{Path(path).stem}: {m.draft_method}, latency fitted to "
                       f"{m.device.get('name', 'the device')}'s measurements, at its {m.acceptance_source} histogram")
    emit({"target": target, "context": context, "max_batch": batch, "acceptance": acceptance,
          "draft_methods": [{"draft_method": s.draft_method, "draft": s.draft_ref, "error": s.error} for s in setups],
          "devices": [d.as_dict() for d in devices]}, as_json, lambda: render.compare_methods(devices, sources))
