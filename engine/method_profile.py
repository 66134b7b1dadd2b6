"""Profile several draft methods of one target on this device, for `tune` to choose among them.

One target latency grid serves every method (each profile carries the same target fit, so every method
is weighed against the same plain decoding). Per method (specmemo_plan.autotune.MeasuredProfile):
- draft-model: the draft's latency grid; acceptance by replay (engine/profiling.py measure_acceptance);
- eagle: the head's latency grid (its forward over n pairs and its logits at all n, over S cached
  positions: what a catch-up or a draft step costs); acceptance from the engine itself, greedy at k_max on
  the calibration prompts (a head's later drafts read its own features, which a teacher-forced replay
  would not see);
- ngram: no draft forward (zero device time); acceptance from the engine at k_max, likewise.
For eagle and ngram the engine's run also ranks each step's depth-1 target token among the drafter's
depth-1 candidates (MeasuredProfile.rank_histogram): what a tree's siblings would have caught, which the
tree model reads instead of assuming it (drafting/trees.py sibling_shares).
An engine-run histogram at k_max also gives the rates of every shorter chain: greedy drafts of a chain
of k are the first k of the chain of k_max (exact for a head; for n-gram the lookup may take another
occurrence when fewer tokens are asked, stated as an approximation).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace

import torch

from specmemo_plan.autotune import MeasuredProfile, fit_latency, samples_to_dicts
from specmemo_plan.drafting.heads import head_shape
from specmemo_plan.memory import Knobs
from specmemo_plan.plan import Generation, make_plan

from .cache import StaticKVCache
from .eagle import HeadDrafter, load_head, read_head_folder
from .forward import Decoder
from . import loading  # loading.load_model read at call time (tests guard it by patching the module)
from .loading import LoadedModel
from .profiling import calibration_prompts, default_grid, measure_acceptance, measure_latencies, median_ms

METHODS_PROFILED = ("draft-model", "eagle", "ngram")
HEAD_WIDTHS = (1, 2, 4, 8)  # pairs per head forward timed: chains use 1-2, EAGLE trees top-k (trees.SEARCH_TOPK)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@torch.inference_mode()
def time_head(head: LoadedModel, target: LoadedModel, dtype: str, batch: int, n: int, context: int,
              repeats: int = 5, warmup: int = 2) -> float:
    """Median ms of one head forward over `batch` x `n` pairs at positions context .. context+n-1, with its
    logits at all n (engine/eagle.py HeadDrafter)."""
    device = next(head.model.parameters()).device
    decoder = Decoder(target.model, StaticKVCache(target.shape, 1, 1, dtype, device))  # the embedding, the head
    drafter = HeadDrafter(head.model, decoder, StaticKVCache(head.shape, batch, context + n, dtype, device), None)
    H = target.shape.hidden_size
    ids = torch.randint(0, target.shape.vocab_size, (batch, n), device=device)
    hidden = torch.randn((batch, n, H), dtype=decoder.head.dtype, device=device)
    mask = torch.empty((batch, 1, n, context + n), dtype=torch.bool, device=device)
    logits = torch.empty((batch * n, drafter.out.shape[0]), dtype=drafter.out.dtype, device=device)
    starts, start_t = [context] * batch, torch.full((batch,), context, device=device)

    def step():
        feats = drafter.forward(ids, hidden, starts, start_t, mask)
        drafter.logits(feats.reshape(batch * n, H), out=logits)

    return median_ms(step, device, repeats, warmup)


def engine_histogram(target: LoadedModel, target_ref: str, plan_knobs: Knobs, draft_ref: str | None, d_shape,
                     spec, num_prompts: int, max_new: int, batch: int = 8) -> tuple[list[int], list[int], dict]:
    """(accepted drafts per step at the knobs' k (k_max), the depth-1 rank histogram, notes), greedy, from the
    engine on the calibration prompts (engine/workflow.py run_prompts, as verify runs a plan)."""
    from .workflow import run_prompts

    prompts = [p["turns"][0] for p in calibration_prompts(num_prompts)]
    t0 = time.perf_counter()
    plan = make_plan(target_ref, target.shape, draft_ref, d_shape, replace(plan_knobs, batch_size=batch), spec,
                     spec.total_memory_bytes, generation=Generation(max_new_tokens=max_new))
    stats = run_prompts(plan, target, None, str(next(target.model.parameters()).device), prompts, max_new,
                        ranks=True).stats
    ranks = stats.rank_histogram if stats.rank_histogram and stats.rank_histogram[1] else None  # shares need rank 1
    return stats.accepted_histogram, ranks, {"prompts": len(prompts), "new_tokens": stats.new_tokens, "method": "engine",
                                      "k_max": plan_knobs.draft_length, "max_new_tokens": stats.max_new,
                                      "seconds": time.perf_counter() - t0}


def profile_methods(target_ref: str, drafters: list[tuple[str, str | None]], dtype: str = "fp32",
                    device: str | None = None, num_prompts: int = 16, k_max: int = 8, max_context: int = 2048,
                    repeats: int = 5, quick: bool = False, acceptance_new_tokens: int = 48,
                    max_batch: int = 8) -> list[MeasuredProfile]:
    """One MeasuredProfile per (method, draft ref), sharing the target's latency fit."""
    from .workflow import _this_device

    spec, torch_device, _ = _this_device(device)
    target = loading.load_model(target_ref, dtype, torch_device)
    grid = default_grid(torch.device(torch_device), max_context, quick, max_batch)
    t0 = time.perf_counter()
    t_samples = measure_latencies(target, "target", dtype, grid["batches"], grid["token_counts"], grid["contexts"],
                                  repeats)
    t_fit = fit_latency(t_samples)
    log(f"latency fit: target {t_fit.mean_abs_pct_error:.1f}% mean error ({time.perf_counter() - t0:.0f} s)")
    context = min(max_context, 1024)
    profiles = []
    for method, ref in drafters:
        t1 = time.perf_counter()
        samples, d_fit, d_shape, draft_entry, histogram, ranks, info = [], None, None, None, None, None, {}
        if method == "draft-model":
            draft = loading.load_model(ref, dtype, torch_device, seed=1)
            samples = measure_latencies(draft, "draft", dtype, grid["batches"], [1, 2], grid["contexts"], repeats)
            d_shape = draft.shape
            histogram, info = measure_acceptance(target, draft, target_ref, dtype, k_max, num_prompts,
                                                 max_new_tokens=acceptance_new_tokens)
        elif method == "eagle":
            d_shape = head_shape("eagle", ref, target.shape)
            folder, cfg = read_head_folder(ref)
            head = load_head(ref, folder, cfg, d_shape, dtype, torch_device, seed=1)
            # n up to 8: an EAGLE tree's later steps forward top-k frontier nodes (tune prices top-k <= the widest)
            samples = measure_latencies(head, "draft", dtype, grid["batches"], HEAD_WIDTHS, grid["contexts"], repeats,
                                        timer=lambda b, n, c: time_head(head, target, dtype, b, n, c, 1, 1))
        if method in ("eagle", "ngram"):
            knobs = Knobs(batch_size=1, max_context=context, draft_length=k_max, weight_dtype=dtype,
                          draft_method=method)
            histogram, ranks, info = engine_histogram(target, target_ref, knobs, ref, d_shape, spec, num_prompts,
                                                      acceptance_new_tokens)
        if samples:
            d_fit = fit_latency(samples)
        if d_shape is not None:
            draft_entry = {"ref": ref, "dtype": dtype, "fingerprint": d_shape.fingerprint}
        log(f"{method}: acceptance histogram {histogram} ({time.perf_counter() - t1:.0f} s)")
        profiles.append(MeasuredProfile(
            device=asdict(spec) | {"torch_device": torch_device},
            target={"ref": target_ref, "dtype": dtype, "fingerprint": target.shape.fingerprint},
            draft=draft_entry, samples=samples_to_dicts(t_samples + samples), target_fit=asdict(t_fit),
            draft_fit=asdict(d_fit) if d_fit else None, acceptance_histogram=histogram,
            acceptance_source="measured", draft_method=method, rank_histogram=ranks,
            notes={"grid": grid, "acceptance_run": info,
                   "random_weights": {"target": target.random_weights}},
        ))
    return profiles
