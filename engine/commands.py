"""The on-device commands of `specmemo-plan`: profile, tune, demo.

They drive the engine, so they live on the engine's side; `specmemo_plan.cli` names them in its
lazy command table and imports this module when one is called or `--help` lists them. Hence
nothing heavy at module level here: torch and transformers load inside the commands
(engine.workflow), and `specmemo-plan --help` stays as quick as the calculator.
"""

from __future__ import annotations

from dataclasses import asdict

import click

from specmemo_plan.cli.options import (SHARE, SHARE_ABOVE_ZERO, apply, budget_option, emit, json_option, model_files,
                                      positive, user_errors)
from specmemo_plan.render.workflow import fit_rows, render_tune

DEMO_TARGET = "bundled:smollm2-135m-instruct"
DEMO_DRAFT = "bundled:smollm2-135m-draft"
DEMO_HEAD = "bundled:smollm2-135m-eagle"
# The demo's search: k to 6 and batch to 4 keep its acceptance replay and quick grid near a minute on
# 2 CPU cores; with the bundled draft (acceptance ~0.37) k >= 3 measured slower than k <= 2 in the
# README's autotune grid, and the quick grid times batches 1, 2 and 4.
DEMO_K_MAX, DEMO_MAX_BATCH = 6, 4

MEASURED_OPTIONS = [
    click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
                 help="Weights and compute (fp32 is the fast path on most CPUs for small batches)."),
    click.option("--device", default=None, help="torch device: cpu, cuda, cuda:1 (default: cuda if present)."),
    click.option("--acceptance", "-a", type=SHARE, default=None,
                 help="Use this per-token acceptance instead of measuring it."),
    click.option("--prompts", "num_prompts", type=click.IntRange(1, 96), default=16, show_default=True,
                 help="Calibration prompts for the acceptance measurement."),
    click.option("--k-max", type=click.IntRange(1, 16), default=8, show_default=True,
                 help="Longest draft length whose acceptance is measured (the histogram's length - 1)."),
    click.option("--repeats", type=click.IntRange(1, 100), default=5, show_default=True, help="Timed runs per point (median)."),
]


def measured_options(func):
    """The options of a profile run, shared by `profile` and `tune` (which may profile first)."""
    return apply(MEASURED_OPTIONS, func)


def _check_output(output, *inputs) -> None:
    """Refuse an -o that cannot be written (a missing folder, a device, one of the inputs) before any work
    (specmemo_plan.files.check_output_path); the write itself checks again."""
    from specmemo_plan.files import check_output_path

    check_output_path(output, inputs=[i for i in inputs if i])


def _profile(target, draft, dtype, device, acceptance, num_prompts, k_max, repeats, context, max_batch=8):
    from .workflow import profile_pair

    return profile_pair(target, draft, dtype=dtype, device=device, acceptance=acceptance, num_prompts=num_prompts,
                        k_max=k_max, max_context=context, repeats=repeats, max_batch=max_batch)


@click.command()
@click.option("--target", "-t", required=True, help="Target model: a preset, bundled:NAME, a folder or a .gguf.")
@click.option("--draft", "-d", default=None, help="Draft model (none: only plain decoding is profiled).")
@measured_options
@click.option("--context", "-c", type=int, default=2048, show_default=True, callback=positive, help="Longest context to profile.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=8, show_default=True,
              help="Largest batch in the latency grid (powers of two up to it, and it).")
@click.option("--draft-method", type=click.Choice(["draft-model", "eagle", "ngram"]), default=None,
              help="How to draft: a draft model, an EAGLE head (-d its folder), or n-gram lookup (no -d); "
                   "default: what the -d file declares. Profiles of several methods feed `tune --measured` repeated.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Measured profile (JSON) to write.")
@json_option
@user_errors
def profile(target, draft, dtype, device, acceptance, num_prompts, k_max, repeats, context, max_batch, draft_method,
            output, as_json):
    """Measure forward latencies and the drafter's acceptance on this device; fit t(B, n, S)."""
    _check_output(output, *model_files(target, draft))  # before torch loads (seconds)
    from specmemo_plan.drafting.resolve import declared_method
    from specmemo_plan.errors import SpecMemoError

    from .workflow import save_measured

    method = draft_method or ((declared_method(draft) or "draft-model") if draft else None)
    if method == "ngram" and draft:
        raise SpecMemoError("--draft-method ngram drafts from the sequence itself, but -d is given", "drop -d")
    if method == "eagle" and not draft:
        raise SpecMemoError("--draft-method eagle needs the head", "give -d with the head's folder")
    if method in ("eagle", "ngram"):
        if acceptance is not None:
            raise SpecMemoError(f"--acceptance: a {method} profile measures acceptance with the engine",
                                "drop --acceptance")
        from .method_profile import profile_methods

        measured = profile_methods(target, [(method, draft)], dtype, device, num_prompts, k_max, context, repeats,
                                   max_batch=max_batch)[0]
    else:
        measured = _profile(target, draft, dtype, device, acceptance, num_prompts, k_max, repeats, context, max_batch)
    save_measured(measured, output)
    emit(asdict(measured), as_json, lambda: "\n".join([f"wrote {output}", fit_rows(measured)]))


@click.command()
@click.option("--measured", "measured_paths", type=click.Path(dir_okay=False), multiple=True,
              help="A measured profile from `profile` (else profile now, with --target/--draft); repeat it with "
                   "profiles of other draft methods of the same target and device to choose among them.")
@click.option("--target", "-t", default=None,
              help="Target to profile and plan (with --measured: must match the profile's).")
@click.option("--draft", "-d", default=None, help="Draft model (with --measured: must match the profile's).")
@measured_options
@budget_option(required=False)
@click.option("--context", "-c", type=int, default=2048, show_default=True, callback=positive,
              help="Tokens per sequence the plan holds: prompt + new tokens.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True, callback=positive,
              help="New tokens per request written into the plan.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Largest batch to search (at most the largest the profile measured).")
@click.option("--retain", type=SHARE_ABOVE_ZERO, default=None,
              help="Smallest memory keeping this share of the best throughput (e.g. 0.96).")
@click.option("--verify", is_flag=True, help="Run the engine on the plan; write measured beside predicted.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Plan file to write.")
@json_option
@user_errors
def tune(measured_paths, target, draft, dtype, device, acceptance, num_prompts, k_max, repeats, budget, context,
         max_new_tokens, max_batch, retain, verify, output, as_json):
    """Pick k, batch and prefill chunk for the best predicted throughput inside --budget; write the plan.

    With --measured, -t, -d and --dtype are optional: given, they must be the profile's models and dtype
    (the curves belong to what was timed); the options that only profiling uses are refused."""
    from specmemo_plan.autotune import read_measured_profile
    from specmemo_plan.plan import write_plan
    from specmemo_plan.tune import tune as tune_plan
    from specmemo_plan.tune import tune_methods

    ctx = click.get_current_context()
    _check_output(output, *measured_paths, *model_files(target, draft))
    profiles = [read_measured_profile(path) for path in measured_paths]
    for path, profiled in zip(measured_paths, profiles):
        _check_measured_matches(ctx, profiled, path, target, draft if len(profiles) == 1 else None, dtype)
    if len(profiles) > 1:
        plan, report = tune_methods(profiles, budget, context, max_new_tokens, retain, k_max, max_batch)
        measured = profiles[[p.draft_method for p in profiles].index(plan.knobs.method(plan.draft is not None))] \
            if plan.knobs.draft_length else profiles[0]
    elif profiles:
        measured = profiles[0]
    elif target:
        from .workflow import check_budget_floor, check_shapes_first

        check_shapes_first(target, draft, context)
        check_budget_floor(target, dtype, context, budget, device)
        measured = _profile(target, draft, dtype, device, acceptance, num_prompts, k_max, repeats, context)
    else:
        raise click.UsageError("give --measured FILE, or --target (and --draft) to profile now")
    if len(profiles) <= 1:
        plan, report = tune_plan(measured, budget, context, max_new_tokens, retain, k_max, max_batch)
    write_plan(plan, output)
    verified = None
    if verify:
        from .workflow import verify as verify_plan
        from .workflow import write_verified

        verified = verify_plan(plan, measured, device=device)
        plan = write_verified(plan, verified, output)
    emit({"plan": str(output), **plan.to_dict()}, as_json, lambda: render_tune(plan, report, verified))


def _draft_fingerprint(ref: str, measured) -> str:
    """-d as the profile's method reads it (a head by its layout, a draft model by its config)."""
    from specmemo_plan.drafting.resolve import resolve_draft
    from specmemo_plan.models import load_shape

    target = load_shape(measured.target["ref"])
    _, shape, _ = resolve_draft(measured.target["ref"], target, ref, measured.draft_method, measured.head_embedding)
    return shape.fingerprint if shape is not None else ""


def demo_dtype(device: str | None) -> str:
    """bf16 where it is the fast path: a GPU, or a CPU with bf16 dot products (avx512_bf16, amx_bf16; on
    this project's 2-core EPYC a bf16 decode step is 1.8x faster than fp32 and a verify of 8 tokens costs
    1.2 steps against fp32's 2+: README, bench/methods_bench.py); fp32 elsewhere (no bf16 instructions:
    bf16 is emulated and slower)."""
    import torch

    from specmemo_plan.hardware.procfs import cpu_flags

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return "bf16"
    return "bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "fp32"


def _head_there(head: str) -> bool:
    """Whether the demo can weigh the head: 'none' skips it; a missing one is said and skipped."""
    from specmemo_plan.drafting.heads import read_head_config
    from specmemo_plan.errors import SpecMemoError

    if head == "none":
        return False
    try:
        read_head_config(head)
        return True
    except SpecMemoError as exc:
        click.echo(f"note: no EAGLE head ({exc}); weighing the draft model and n-gram lookup", err=True)
        return False


PROFILING_ONLY = ("acceptance", "num_prompts", "repeats")  # options that shape a profile run, not the search


def _given(ctx, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


def _check_measured_matches(ctx, measured, path, target, draft, dtype) -> None:
    """-t, -d, --dtype beside --measured are filters the profile must pass, not silently ignored choices."""
    from specmemo_plan.errors import SpecMemoError
    from specmemo_plan.models import load_shape

    for role, ref, profiled in (("target", target, measured.target), ("draft", draft, measured.draft)):
        if ref is None:
            continue
        flag = "-t" if role == "target" else "-d"
        if profiled is None:
            raise SpecMemoError(f"{flag} {ref}: the measured profile {path} has no {role}",
                                f"drop {flag}, or profile this pair with `specmemo-plan profile`")
        given = load_shape(ref).fingerprint if role == "target" else _draft_fingerprint(ref, measured)
        if given != profiled["fingerprint"]:
            raise SpecMemoError(f"{flag} {ref}: the measured profile {path} timed {profiled['ref']} as the {role}",
                                f"drop {flag} (the profile decides the models), or profile {ref}")
    if _given(ctx, "dtype") and dtype != measured.target["dtype"]:
        raise SpecMemoError(f"--dtype {dtype}: the measured profile {path} timed {measured.target['dtype']}",
                            f"drop --dtype, or profile with --dtype {dtype}")
    given = [name for name in PROFILING_ONLY if _given(ctx, name)]
    if given:
        names = ", ".join("--" + ("prompts" if n == "num_prompts" else n) for n in given)
        raise SpecMemoError(f"{names}: these shape a profile run; {path} was measured already",
                            "drop them, or profile again with them")


@click.command()
@click.option("--target", "-t", default=DEMO_TARGET, show_default=True, help="Target model.")
@click.option("--draft", "-d", default=DEMO_DRAFT, show_default=True, help="Draft model.")
@click.option("--head", default=DEMO_HEAD, show_default=True, help="EAGLE-style head of the target ('none': no head).")
@budget_option(required=False, default="2GiB", help_text="Memory budget for the plan.")
@click.option("--context", "-c", type=int, default=1024, show_default=True, callback=positive,
              help="Tokens per sequence the plan holds.")
@click.option("--output", "-o", default="plan.json", show_default=True, type=click.Path(dir_okay=False),
              help="Plan file to write.")
@click.option("--device", default=None, help="torch device: cpu, cuda, cuda:1 (default: cuda if present).")
@click.option("--prompts", "num_prompts", type=click.IntRange(1, 96), default=8, show_default=True,
              help="Calibration prompts for the acceptance measurement.")
@click.option("--verify-prompts", type=click.IntRange(1, 96), default=4, show_default=True,
              help="Calibration prompts the engine generates for, with the plan and with plain decoding.")
@click.option("--new-tokens", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="New tokens per prompt in the acceptance measurement and the engine's runs.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
              help="Weights and compute; auto: bf16 on a GPU or a CPU with bf16 instructions, else fp32.")
@json_option
@user_errors
def demo(target, draft, head, budget, context, output, device, num_prompts, verify_prompts, new_tokens, dtype,
         as_json):
    """The whole chain on the bundled target: profile each drafter (the draft model, the EAGLE head, n-gram
    lookup), tune among them, write the plan, generate, compare with plain decoding.

    The first run converts the bundled SmolLM2 GGUF (98 MB, 4-bit) to fp32 safetensors: about 20 s on
    2 CPU cores, writing 517 MB to $SPECMEMO_CACHE (default ~/.cache/specmemo-plan), once per file
    content (every clone and venv holding the same file reuses it). The budget and -o are checked
    before anything is measured."""
    from specmemo_plan.tune import tune_methods

    _check_output(output, *model_files(target, draft))  # before torch loads (seconds)
    from .method_profile import profile_methods
    from .workflow import check_budget_floor, check_shapes_first, log, verify, write_verified

    check_shapes_first(target, draft, context)
    dtype = demo_dtype(device) if dtype == "auto" else dtype
    check_budget_floor(target, dtype, context, budget, device)
    drafters = [("draft-model", draft)] + ([("eagle", head)] if _head_there(head) else []) + [("ngram", None)]
    log(f"1/3 profiling {target} with " + ", ".join(f"{m} {r}" if r else m for m, r in drafters)
        + " on this device (a quick grid; `profile` measures a fuller one)")
    profiles = profile_methods(target, drafters, dtype=dtype, device=device, num_prompts=num_prompts,
                               k_max=DEMO_K_MAX, max_context=context, repeats=3, quick=True,
                               acceptance_new_tokens=new_tokens, max_batch=DEMO_MAX_BATCH)
    log("2/3 tuning among the methods")
    plan, report = tune_methods(profiles, budget, context, max_new_tokens=128, k_max=DEMO_K_MAX,
                                max_batch=DEMO_MAX_BATCH)
    chosen = plan.knobs.method(plan.draft is not None)
    measured = next((p for p in profiles if p.draft_method == chosen), profiles[0])
    log(f"3/3 generating with the engine (the plan: {chosen}, then plain decoding)")
    verified = verify(plan, measured, num_prompts=verify_prompts, max_new_tokens=new_tokens, device=device)
    plan = write_verified(plan, verified, output)
    emit({"plan": str(output), **plan.to_dict()}, as_json,
         lambda: "\n".join([fit_rows(measured), render_tune(plan, report, verified)]))
