"""`--draft-method` on the command line: one method, or several side by side (min-budget, fit, compare).

`--draft-method eagle3` (the --draft is its head), `--draft-method eagle3=PATH` (each method its own
draft), repeated to compare, or `all`: the method the --draft declares, n-gram, and MTP where the target
has MTP layers. The comparison answers "which method pays under this budget": per method its memory,
predicted tokens/s, speedup, and the cheapest budget at which it pays.
"""

from __future__ import annotations

from dataclasses import replace

import click

from .. import budget as budget_mod
from ..drafting.methods import DRAFT_METHODS, get_method
from ..drafting.resolve import declared_method
from ..errors import SpecMemoError
from ..models import load_shape
from ..placement import split_layers
from ..render import planner as render
from ..throughput import predict_speed
from .options import emit


def method_specs(values: tuple[str, ...], draft: str | None) -> list[tuple[str | None, str | None]]:
    """[(method or None, draft ref or None)] from --draft-method values (module docstring)."""
    if not values:
        return [(None, draft)]
    out = []
    for value in values:
        name, _, ref = value.partition("=")
        if name == "all":
            out += [(declared_method(draft) or "draft-model", draft)] if draft else []
            out += [("ngram", None), ("mtp", None)]
            continue
        if name not in DRAFT_METHODS:
            raise click.BadParameter(f"{name!r} is not a draft method (choose {', '.join(DRAFT_METHODS)} or all)",
                                     param_hint="--draft-method")
        # one method: the --draft is its draft (a method that takes none refuses it); several: each its own
        keep = len(values) == 1 or get_method(name).needs_draft
        out.append((name, ref or (draft if keep else None)))
    return out


def single_method(values: tuple[str, ...], draft: str | None) -> tuple[str | None, str | None]:
    specs = method_specs(values, draft)
    if len(specs) != 1 or values == ("all",):
        raise click.UsageError("this command takes one --draft-method; min-budget, fit and compare weigh several")
    return specs[0]


def compare_methods(command, specs, target, draft_length, batch, context, dtype, draft_dtype, kv_dtype,
                    prefill_chunk, profile_name, num_devices, split_policy, as_json, tree_depth, tree_topk,
                    head_embedding, acceptance=None, bandwidth_gbps=100.0, retain=None, budget=None):
    """One row per method: its memory at the knobs, predicted tokens/s and speedup there, and its minimum
    budget (the cheapest shape at which it pays); with --budget (fit) whether it fits. A method that
    cannot be built here (`all` offering MTP to a target without MTP layers) is listed with the reason."""
    from .calculator import acceptance_given, gather

    target_shape = load_shape(target)
    rows = []
    for method, draft in specs:
        try:
            s = gather(target, draft, draft_length, batch, context, dtype, draft_dtype, kv_dtype, prefill_chunk,
                       profile_name, num_devices, split_policy, False, method, tree_depth, tree_topk, head_embedding,
                       target_shape=target_shape)
        except SpecMemoError as exc:
            rows.append({"draft_method": method, "draft": draft, "error": str(exc)})
            continue
        a, a_source = acceptance_given(acceptance, s.method)
        latency = s.latency(bandwidth_gbps)
        memory = split_layers(s.target, s.draft, s.knobs, [10**18] * s.devices, s.overhead, s.policy).total
        speed = predict_speed(s.target, s.draft, s.knobs, latency, acceptance=a)
        row = {"draft_method": s.method, "draft": s.draft_ref, "draft_length": s.knobs.draft_length,
               "tree": s.knobs.tree.as_dict(), "total_bytes": memory.total_bytes,
               "draft_weights_bytes": memory.components["draft_weights"],
               "draft_kv_bytes": memory.components["draft_kv"],
               "candidate_buffers_bytes": memory.components["candidate_buffers"],
               "tokens_per_s": speed.tokens_per_s, "plain_tokens_per_s": speed.plain_tokens_per_s,
               "speedup": speed.speedup, "acceptance": a, "acceptance_source": a_source,
               "acceptance_reference": get_method(s.method).acceptance_source,
               "latency_source": latency.source}
        if budget is not None:
            row["fits"] = memory.total_bytes <= budget
        try:
            base = replace(s.knobs, draft_length=1, tree_depth=None, tree_topk=None)
            mb = budget_mod.min_budget(s.target, s.draft, base, latency, retain=retain, device_overhead_bytes=s.overhead,
                                       devices=s.devices, policy=s.policy, acceptance=a)
            row.update(min_budget_bytes=mb.total_bytes, min_budget_tree=mb.tree.as_dict(),
                       min_budget_speedup=mb.speed.speedup, min_budget_tokens_per_s=mb.speed.tokens_per_s)
        except SpecMemoError as exc:
            row.update(min_budget_bytes=None, min_budget_note=exc.message)
        rows.append(row)
    data = {"command": command, "budget_bytes": budget, "methods": rows}
    emit(data, as_json, lambda: render.methods(rows, budget))
