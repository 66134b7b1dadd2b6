"""The calculator commands: presets, estimate, min-budget, fit, plan. No torch, no transformers.

Every command that takes a model takes `--devices N` and `--split-policy` in its own definition: the
plan is placed over N devices (placement/), and one device is N = 1 of the same path.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import click

from .. import budget as budget_mod
from ..errors import SpecMemoError
from ..files import check_output_path
from ..memory import WEIGHT_DTYPES, Knobs, breakdown, candidate_buffer_specs
from ..models import check_pair, load_shape
from ..placement import DEFAULT_POLICY, POLICIES, split_layers
from ..drafting.methods import get_method
from ..drafting.resolve import check_method_limits, resolve_draft
from .methods import compare_methods, method_specs, single_method
from ..render import planner as render
from ..units import format_bytes
from ..throughput import DEFAULT_ACCEPTANCE, MAX_DRAFT_LENGTH, BandwidthLatency, predict_speed, roofline_from_profile
from .engine_options import (check_one_gpu_path, engine_min_budget, engine_options, engine_report,
                             plan_engine_prediction)
from .options import (BANDWIDTH, KV_DTYPE_HELP, POSITIVE_FLOAT, SHARE, SHARE_ABOVE_ZERO, apply, budget_option, emit, json_option,
                      kv_dtype, model_files, positive, user_errors)

DEFAULT_DRAFT_LENGTH = 4  # a common default (vLLM's examples, HF assisted generation starts at 5)


def model_options(func):
    """Options every calculator command shares."""
    return apply([
        click.option("--target", "-t", required=True, help="Preset name, bundled:NAME, config.json, model folder or .gguf."),
        click.option("--draft", "-d", default=None, help="Draft model, same forms as --target. Omit for plain decoding."),
        click.option("--draft-length", "-k", type=int, default=None,
                     help="Draft tokens verified per step, T (default 4 with a draft; min-budget searches when omitted)."),
        click.option("--draft-method", "draft_method", multiple=True, metavar="METHOD[=DRAFT]",
                     help="draft-model, eagle, eagle3, medusa, mtp, ngram or none (default: from the --draft file). "
                          "min-budget, fit and compare take it repeated, METHOD=DRAFT each, or `all`, to compare methods."),
        click.option("--tree-depth", type=int, default=None, callback=positive,
                     help="Draft steps of a token tree (default: a chain, depth = -k)."),
        click.option("--tree-topk", type=int, default=None, callback=positive,
                     help="Children per tree node (eagle, eagle3, medusa, ngram; default 1: a chain)."),
        click.option("--head-embedding", type=click.Choice(["shared", "copied"]), default=None,
                     help="A head's embedding (MTP: and output head) shared with the target (vLLM, SGLang; "
                          "default) or its own copy (EAGLE reference, DeepSeek-V3 checkpoint)."),
        click.option("--batch", "-b", type=int, default=1, show_default=True, callback=positive,
                     help="Sequences decoded together."),
        click.option("--context", "-c", type=int, default=4096, show_default=True, callback=positive,
                     help="Tokens per sequence: prompt + generated."),
        click.option("--dtype", type=click.Choice(WEIGHT_DTYPES), default="fp16", show_default=True, help="Target weights."),
        click.option("--draft-dtype", type=click.Choice(WEIGHT_DTYPES), default=None, help="Draft weights (default: --dtype)."),
        click.option("--kv-dtype", default=None, callback=kv_dtype, help=KV_DTYPE_HELP),
        click.option("--prefill-chunk", type=int, default=None, callback=positive, help="Prompt tokens per prefill forward (default 512)."),
        click.option("--profile", "-p", "profile_name", default=None, help="Hardware profile (see `devices --profiles`)."),
        click.option("--devices", "num_devices", type=int, default=1, show_default=True, callback=positive,
                     help="Split the target layer-wise over N devices of the --profile's kind (or this machine's GPUs)."),
        click.option("--split-policy", type=click.Choice(POLICIES), default=DEFAULT_POLICY, show_default=True,
                     help="With --devices: spread layers over every device (balanced) or fill device 0 first (sequential)."),
        json_option,
    ], func)


def speed_options(func):
    return apply([
        click.option("--acceptance", "-a", type=SHARE, default=None,
                     help=f"Per-token acceptance rate of the draft  [default: {DEFAULT_ACCEPTANCE}, assumed]"),
        click.option("--bandwidth", "bandwidth_gbps", type=BANDWIDTH, default=100.0, show_default=True,
                     help="GB/s for the bandwidth latency model when no --profile is given."),
    ], func)


@dataclass(frozen=True)
class Setup:
    """What a calculator command works on: the models, the knobs and the devices."""

    target: object  # ModelShape
    draft: object | None
    knobs: Knobs
    devices: int
    policy: str
    device: object | None  # hardware.LocalDevice: None when no device was named and N = 1
    overhead: int  # one device's runtime overhead
    method: str = "none"  # the draft method (drafting/methods.py)
    draft_ref: str | None = None  # the draft's reference as the plan stores it (MTP: the target's)

    @property
    def profile(self):
        return self.device.profile if self.device else None

    @property
    def link_gbps(self) -> float | None:
        return self.profile.interconnect_bandwidth_gbps if self.profile else None

    def latency(self, bandwidth_gbps: float):
        """Roofline of the profile, else the bandwidth model (the speedup does not depend on its value)."""
        if self.profile is not None:
            return roofline_from_profile(self.profile, self.knobs.weight_dtype)
        return BandwidthLatency(bandwidth_gbps)

    def head(self) -> str:
        t, d, k = self.target, self.draft, self.knobs
        shape = k.tree.label
        if self.method == "ngram":
            text = f"{t.name} + n-gram drafting ({shape})"
        elif d:
            text = f"{t.name} + {d.name} ({self.method}, {shape})" if self.method != "draft-model" else \
                f"{t.name} + {d.name} ({shape})"
        else:
            text = f"{t.name} (plain decoding)"
        text += f", batch {k.batch_size}, context {k.max_context}"
        if self.devices > 1:
            text += f", on {self.devices} x {self.device.spec.name} ({format_bytes(self.device.memory_bytes)} each)"
        return text


def gather(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk,
           profile_name, num_devices=1, split_policy=DEFAULT_POLICY, need_device=False, draft_method=None,
           tree_depth=None, tree_topk=None, head_embedding=None, target_shape=None) -> Setup:
    """Models, knobs and devices; a device is resolved when named, when N > 1, or when the command needs one."""
    from ..hardware import this_device

    target_shape = target_shape or load_shape(target)
    method, draft_shape, draft_ref = resolve_draft(target, target_shape, draft, draft_method, head_embedding)
    pair_note = check_pair(target_shape, draft_shape) if method == "draft-model" else None
    # assumptions behind the numbers (family defaults, padded vocabularies, header/formula gaps): on stderr,
    # so --json output stays one object
    for note in model_notes(target_shape, draft_shape, pair_note):
        click.echo(f"note: {note}", err=True)
    if draft_length is None:
        draft_length = 0 if method == "none" else target_shape.mtp_layers if method == "mtp" else DEFAULT_DRAFT_LENGTH
    knobs = Knobs(
        batch_size=batch, max_context=context, draft_length=draft_length, weight_dtype=dtype,
        draft_weight_dtype=draft_dtype, kv_dtype=kv_dtype, prefill_chunk=prefill_chunk,
        draft_method=method, tree_depth=tree_depth, tree_topk=tree_topk, head_embedding=head_embedding,
    ).validate(has_draft=draft_shape is not None)
    check_method_limits(method, draft_shape, knobs)
    if method == "ngram":
        from ..drafting.ngram import host_note

        click.echo(f"note: {host_note(batch, context)}", err=True)
    if context > target_shape.max_position_embeddings:
        raise SpecMemoError(
            f"context {context} exceeds the target's {target_shape.max_position_embeddings} positions",
            f"use --context {target_shape.max_position_embeddings} or less",
        )
    if method == "draft-model" and context > draft_shape.max_position_embeddings:
        click.echo(f"note: the draft was trained for {draft_shape.max_position_embeddings} positions; "
                   "its acceptance may drop past them", err=True)
    device = None
    if profile_name or num_devices > 1 or need_device:
        device = this_device(profile_name=profile_name, count=num_devices)
    overhead = device.profile.runtime_overhead_bytes if device and device.profile else 0
    return Setup(target_shape, draft_shape, knobs, num_devices, split_policy, device, overhead, method, draft_ref)


def model_notes(target, draft, pair_note: str | None = None) -> list[str]:
    notes = [f"{role}: {note}" for role, shape in (("target", target), ("draft", draft)) if shape for note in shape.notes]
    return notes + ([pair_note] if pair_note else [])


def model_facts(shape, dtype: str) -> dict:
    """Where a model's weight bytes come from: the config formula, or the checkpoint's headers (`stored`)."""
    stored = shape.stored
    return {
        "name": shape.name, "model_type": shape.model_type, "num_params": shape.num_params,
        "weight_source": stored.source if dtype == "stored" else f"{shape.weight_source} at {dtype}",
        "stored_bytes": stored.total_bytes if stored else None,
        "stored_source": stored.source if stored else None,
        "quant_method": (stored.quant_method if stored else None) or shape.quant_method,
        "notes": list(shape.notes),
    }


def acceptance_given(acceptance: float | None, method: str = "draft-model") -> tuple[float, str]:
    """The given acceptance, else the method's default (drafting/methods.py): 'assumed', or 'published'
    where a measured figure stands behind it."""
    if acceptance is not None:
        return acceptance, "given"
    if method in ("draft-model", "none"):
        return DEFAULT_ACCEPTANCE, "assumed"
    m = get_method(method)
    return m.default_acceptance, "assumed" if m.acceptance_source.startswith("assumed") else "published"


# ----------------------------------------------------------------------------- commands


@click.command()
@model_options
@engine_options
@user_errors
def estimate(target, draft, draft_length, draft_method, tree_depth, tree_topk, head_embedding, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk, profile_name,
             num_devices, split_policy, as_json, **engine_args):
    """Memory needed, component by component (plain decoding without --draft); with --engine, as that engine
    allocates it (per GPU, with its startup lines)."""
    method, draft = single_method(draft_method, draft)
    s = gather(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk,
               profile_name, num_devices, split_policy, False, method, tree_depth, tree_topk, head_embedding)
    single = breakdown(s.target, s.draft, s.knobs, s.overhead)
    budget = s.device.memory_bytes if s.device else single.total_bytes
    split = split_layers(s.target, s.draft, s.knobs, [budget] * s.devices, s.overhead, s.policy)
    data = dict(split.total.as_dict(), knobs=s.knobs.__dict__, profile=s.profile.key if s.profile else None,
                num_devices=s.devices, target=model_facts(s.target, s.knobs.weight_dtype),
                draft=model_facts(s.draft, s.knobs.draft_dtype) if s.draft else None,
                draft_method=s.method, tree=s.knobs.tree.as_dict() if s.knobs.draft_length else None,
                buffers=[dict(name=b.name, shape=list(b.shape), dtype=b.dtype, bytes=b.nbytes)
                         for b in candidate_buffer_specs(s.target, s.draft, s.knobs)])
    if s.device is not None:
        data.update(device_memory_bytes=s.device.memory_bytes, fits=split.fits)
    if s.devices > 1:
        data.update(single_device_total_bytes=single.total_bytes, split=split.as_dict())
    report = engine_report(engine_args, s)
    if report is not None:
        data.update(engine=report["engine"], engine_startup_log=report["startup_log"], engine_refusal=report["refusal"])
    emit(data, as_json, lambda: render.estimate(s.head(), split.total, split, single.total_bytes, s.profile,
                                                data.get("fits"), [data["target"], data["draft"]])
         + (render.engine_block(report) if report else ""))


@click.command("min-budget")
@model_options
@speed_options
@click.option("--retain", type=SHARE_ABOVE_ZERO, default=None,
              help="Keep at least this share of the best SD throughput (e.g. 0.96) instead of any speedup.")
@engine_options
@user_errors
def min_budget_cmd(target, draft, draft_length, draft_method, tree_depth, tree_topk, head_embedding, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk,
                   profile_name, num_devices, split_policy, as_json, acceptance, bandwidth_gbps, retain, **engine_args):
    """Smallest memory (per device) at which speculative decoding still beats plain decoding; with --engine, the
    smallest GPU on which that engine's own accounting starts the plan."""
    specs = method_specs(draft_method, draft)
    several = len(specs) > 1 or draft_method == ("all",)
    if check_one_gpu_path(engine_args, num_devices, several) is None and several:
        return compare_methods("min-budget", specs, target, draft_length, batch, context, dtype, draft_dtype,
                               kv_dtype, prefill_chunk, profile_name, num_devices, split_policy, as_json,
                               tree_depth, tree_topk, head_embedding, acceptance=acceptance,
                               bandwidth_gbps=bandwidth_gbps, retain=retain)
    (method, draft), = specs
    if not draft and method in (None, "draft-model", "none"):
        raise click.UsageError("min-budget needs --draft: it is the budget under which SD still pays")
    fixed_k = draft_length is not None  # -k given: that k alone; else every k from 1 to MAX_DRAFT_LENGTH
    s = gather(target, draft, draft_length if fixed_k else (tree_depth or 1), batch, context, dtype, draft_dtype,
               kv_dtype, prefill_chunk, profile_name, num_devices, split_policy, False, method,
               tree_depth if fixed_k else None, tree_topk if fixed_k else None, head_embedding)
    acceptance, acceptance_source = acceptance_given(acceptance, s.method)
    latency = s.latency(bandwidth_gbps)
    result = budget_mod.min_budget(s.target, s.draft, s.knobs, latency, retain=retain, device_overhead_bytes=s.overhead,
                                   devices=s.devices, interconnect_gbps=s.link_gbps, policy=s.policy,
                                   draft_lengths=(draft_length,) if fixed_k else None, acceptance=acceptance)
    speed = result.speed
    k_source = "given with -k" if fixed_k else f"searched 1..{MAX_DRAFT_LENGTH}" + (
        " and trees" if get_method(s.method).trees else "")
    data = {
        "min_budget_bytes": result.total_bytes, "min_budget_bytes_per_device": result.total_bytes,
        "num_devices": s.devices, "draft_length": result.draft_length,
        "draft_length_source": "given" if fixed_k else "searched", "predicted_speedup": speed.speedup,
        "tokens_per_s": speed.tokens_per_s, "plain_tokens_per_s": speed.plain_tokens_per_s,
        "plain_total_bytes": result.plain_total_bytes, "acceptance": acceptance, "acceptance_source": acceptance_source,
        "retain": retain, "latency_source": latency.source, "interconnect_gbps": s.link_gbps,
        "memory": result.memory.as_dict(), "split": result.split.as_dict(),
        "draft_method": s.method, "tree": result.tree.as_dict(), "engine_min_budget": engine_min_budget(engine_args, s, result),
    }
    emit(data, as_json, lambda: render.min_budget(result, latency.source, acceptance, acceptance_source, s.devices,
                                                  k_source) + render.engine_min_budget(data["engine_min_budget"]))


@click.command()
@model_options
@budget_option(required=True)
@engine_options
@user_errors
def fit(target, draft, draft_length, draft_method, tree_depth, tree_topk, head_embedding, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk, profile_name,
        num_devices, split_policy, as_json, budget, **engine_args):
    """What fits a budget (per device): the largest batch, context and draft length, each with the others fixed."""
    specs = method_specs(draft_method, draft)
    if len(specs) > 1 or draft_method == ("all",):
        return compare_methods("fit", specs, target, draft_length, batch, context, dtype, draft_dtype, kv_dtype,
                               prefill_chunk, profile_name, num_devices, split_policy, as_json, tree_depth,
                               tree_topk, head_embedding, budget=budget)
    (method, draft), = specs
    s = gather(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk,
               profile_name, num_devices, split_policy, False, method, tree_depth, tree_topk, head_embedding)
    budget_mod.check_weights_fit(s.target, s.draft, s.knobs, budget, s.overhead, s.devices)
    try:
        split = split_layers(s.target, s.draft, s.knobs, [budget] * s.devices, s.overhead, s.policy)
    except SpecMemoError:  # over several devices, a plan the walk cannot place does not fit
        split = None
    fits = split is not None and split.fits

    def largest(knob):
        if knob == "draft_length" and not s.knobs.tree.is_chain:
            return budget_mod.largest_tree_tokens(s.target, s.draft, s.knobs, budget, s.overhead, s.devices)
        return budget_mod.largest(knob, s.target, s.draft, s.knobs, budget, s.overhead, s.devices)

    data = {
        "budget_bytes": budget, "num_devices": s.devices, "fits": fits,
        "total_bytes": split.total.total_bytes if split else None,
        "headroom_bytes": min(d.headroom_bytes for d in split.devices) if split else None,
        "largest_batch": largest("batch_size"), "batch_search_limit": budget_mod.MAX_BATCH_SEARCH,
        "largest_context": largest("max_context"),
        "largest_draft_length": largest("draft_length"), "draft_length_limit": MAX_DRAFT_LENGTH,
        "model_max_context": budget_mod.knob_limit("max_context", s.target),
        "split": split.as_dict() if split else None, "draft_method": s.method,
        "tree": s.knobs.tree.as_dict() if s.knobs.draft_length else None,
    }
    report = engine_report(engine_args, s)
    if report is not None:  # the engine's own accounting decides whether it starts
        data.update(engine=report["engine"], engine_startup_log=report["startup_log"], engine_refusal=report["refusal"],
                    fits=fits and report["refusal"] is None and report["result"].total_bytes <= budget)
    if data["largest_batch"] == budget_mod.MAX_BATCH_SEARCH:
        data["notes"] = [f"the batch search stops at {budget_mod.MAX_BATCH_SEARCH} (budget.MAX_BATCH_SEARCH): a larger "
                         "batch may fit too; give --batch to check one"]
    emit(data, as_json, lambda: render.fit(data, s.knobs, s.knobs.draft_length > 0, s.devices, MAX_DRAFT_LENGTH, split)
         + (render.engine_block(report) if report else ""))


@click.command()
@model_options
@budget_option(required=False)
@speed_options
@click.option("--max-new-tokens", type=int, default=256, show_default=True, callback=positive,
              help="New tokens per request the engine generates.")
@click.option("--sampling", type=click.Choice(["greedy", "sample"]), default="greedy", show_default=True,
              help="greedy, or sample (lossless speculative sampling).")
@click.option("--temperature", type=POSITIVE_FLOAT, default=1.0, show_default=True, help="With --sampling sample.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of --sampling sample.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Plan file to write (a symlink is written through; a device, a folder or an input is refused).")
@engine_options
@user_errors
def plan(target, draft, draft_length, draft_method, tree_depth, tree_topk, head_embedding, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk, profile_name,
         num_devices, split_policy, as_json, budget, acceptance, bandwidth_gbps, max_new_tokens, sampling,
         temperature, seed, output, **engine_args):
    """Write a plan file from explicit knobs (no profiling; `tune` measures instead). --budget is per device."""
    from .. import plan as plan_mod

    method, draft = single_method(draft_method, draft)
    check_output_path(output, inputs=model_files(target, draft))  # before any work, and never over a model's file
    s = gather(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk,
               profile_name, num_devices, split_policy, True, method, tree_depth, tree_topk, head_embedding)
    budget = budget or s.device.memory_bytes
    if budget > s.device.memory_bytes:
        raise SpecMemoError(f"the budget {format_bytes(budget)} exceeds the device's {format_bytes(s.device.memory_bytes)}",
                            "give a --budget the device has (per device), or leave it out for the whole device")
    budget_mod.check_weights_fit(s.target, s.draft, s.knobs, budget, s.overhead, s.devices)
    acceptance, acceptance_source = acceptance_given(acceptance, s.method)
    latency = s.latency(bandwidth_gbps)
    split = split_layers(s.target, s.draft, s.knobs, [budget] * s.devices, s.overhead, s.policy)
    speed = predict_speed(s.target, s.draft, s.knobs, latency, acceptance=acceptance, split=split,
                          interconnect_gbps=s.link_gbps)
    p = plan_mod.make_plan(
        target, s.target, s.draft_ref, s.draft, s.knobs, s.device.spec, budget,
        generation=plan_mod.Generation(max_new_tokens=max_new_tokens, sampling=sampling, temperature=temperature, seed=seed),
        device_overhead_bytes=s.overhead, throughput=speed.plan_fields(latency.source, acceptance_source),
        provenance={"command": "specmemo-plan plan", "argv": sys.argv[1:], "method": "explicit knobs, predicted"},
        policy=s.policy,
    )
    prediction = plan_engine_prediction(engine_args, s, p)  # into p.provenance; refuses what it would not start
    path = plan_mod.write_plan(p, output)
    single = breakdown(s.target, s.draft, s.knobs, s.overhead).total_bytes
    emit({"plan": str(path), **p.to_dict()}, as_json,
         lambda: render.plan(path, p, split, single, speed, latency.source, acceptance_source, s.link_gbps,
                             render.MEASURE_HINT) + render.engine_prediction(prediction))

