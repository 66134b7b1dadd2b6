"""Measurements the autotuner fits: forward latencies on the device and the pair's acceptance.

Latency: the engine's own forward (static cache, per-row positions, logits only where used) of
B sequences x n new tokens over S cached positions, with warm-up, device synchronisation,
repeats and the median. Acceptance: the engine run greedily at k_max on the calibration prompts,
its histogram of accepted lengths per step.
"""

from __future__ import annotations

import importlib.resources
import json
import statistics
import sys
import time
from dataclasses import replace

import torch

from specmemo_plan.autotune import LatencySample
from specmemo_plan.memory import Knobs
from specmemo_plan.plan import DeviceSpec, Generation, make_plan

from .cache import StaticKVCache
from .forward import Decoder
from .loading import LoadedModel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_forward(loaded: LoadedModel, dtype: str, batch: int, num_tokens: int, context: int,
                 repeats: int = 5, warmup: int = 2) -> float:
    """Median ms of one forward of `batch` x `num_tokens` at positions context .. context+n-1,
    with the output layer at all n positions (as a verify pass computes them)."""
    model = loaded.model
    device = next(model.parameters()).device
    shape = loaded.shape
    cache = StaticKVCache(shape, batch, context + num_tokens, dtype, device)
    decoder = Decoder(model, cache)
    ids = torch.randint(0, shape.vocab_size, (batch, num_tokens), device=device)
    mask = torch.empty((batch, 1, num_tokens, context + num_tokens), dtype=torch.bool, device=device)
    logits = torch.empty((batch, num_tokens, shape.vocab_size), dtype=decoder.head.dtype, device=device)
    starts = [context] * batch
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        hidden = decoder.forward(ids, starts, mask)
        decoder.logits(hidden, out=logits)
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_latencies(loaded: LoadedModel, role: str, dtype: str, batches, token_counts, contexts,
                      repeats: int = 5, progress: bool = True) -> list[LatencySample]:
    """The grid of (batch, tokens, context) for one model, with a progress bar on stderr."""
    from tqdm import tqdm

    grid = [(b, n, c) for b in batches for n in token_counts for c in contexts]
    samples = []
    for b, n, c in tqdm(grid, desc=f"profiling {role}", file=sys.stderr, disable=not progress, leave=False):
        samples.append(LatencySample(role, b, n, c, time_forward(loaded, dtype, b, n, c, repeats)))
    return samples


def verify_cost_ratios(loaded: LoadedModel, dtype: str, max_tokens: int = 8, context: int = 256,
                       repeats: int = 5, rounds: int = 5) -> dict[int, float]:
    """t(1, n) / t(1, 1) for n = 1 .. max_tokens: what a verify pass of n tokens costs in decode
    steps. SD pays only where the accepted tokens per step exceed this plus the draft's cost.
    Each round times every n back to back and divides by that round's t(1, 1); the median over
    rounds is kept, so background load that drifts between rounds cancels out."""
    ratios: dict[int, list[float]] = {n: [] for n in range(1, max_tokens + 1)}
    for _ in range(rounds):
        ms = {n: time_forward(loaded, dtype, 1, n, context, repeats) for n in ratios}
        for n in ratios:
            ratios[n].append(ms[n] / ms[1])
    return {n: statistics.median(r) for n, r in ratios.items()}


def calibration_prompts(limit: int | None = None) -> list[dict]:
    """The shipped calibration set (specmemo_plan/data/calibration_prompts.json), in file order
    interleaved by category so that a short prefix still covers every category."""
    data = json.loads(importlib.resources.files("specmemo_plan").joinpath("data/calibration_prompts.json").read_text())
    by_category: dict[str, list] = {}
    for prompt in data["prompts"]:
        by_category.setdefault(prompt["category"], []).append(prompt)
    interleaved = [p for group in zip(*by_category.values()) for p in group]
    return interleaved[:limit] if limit else interleaved


def measure_acceptance(target: LoadedModel, draft: LoadedModel, target_ref: str, draft_ref: str, dtype: str,
                       k_max: int = 8, num_prompts: int = 16, max_new_tokens: int = 48, context: int = 1024,
                       progress: bool = True) -> tuple[list[int], dict]:
    """Histogram of accepted drafts per step (index 0..k_max) over the calibration prompts, greedy,
    batch 1; multi-turn prompts run as chat sessions so later turns reuse the earlier ones' cache."""
    from tqdm import tqdm

    from .runtime import Engine

    device = next(target.model.parameters()).device
    knobs = Knobs(batch_size=1, max_context=context, draft_length=k_max, weight_dtype=dtype)
    gpu = device.type == "cuda"  # the engine checks the plan's device name and kind (rocm under HIP)
    spec = DeviceSpec(kind=("rocm" if torch.version.hip else "cuda") if gpu else "cpu",
                      name=torch.cuda.get_device_name(device) if gpu else str(device),
                      total_memory_bytes=torch.cuda.get_device_properties(device).total_memory if gpu else 2**62)
    plan = make_plan(target_ref, target.shape, draft_ref, draft.shape, knobs, spec, spec.total_memory_bytes,
                     generation=Generation(max_new_tokens=max_new_tokens))
    engine = Engine(plan, device=str(device), target=target, draft=draft)
    histogram = [0] * (k_max + 1)
    tokens = 0
    for prompt in tqdm(calibration_prompts(num_prompts), desc="acceptance", file=sys.stderr, disable=not progress, leave=False):
        session = engine.chat(on_overflow="drop-oldest", max_new_tokens=max_new_tokens)
        for turn in prompt["turns"]:
            reply = session.say(turn) if engine.real_tokenizer else session.say_ids(engine.encode(turn))
            histogram = [a + b for a, b in zip(histogram, reply.stats.accepted_histogram)]
            tokens += reply.stats.new_tokens
    return histogram, {"prompts": num_prompts, "new_tokens": tokens, "k_max": k_max, "max_new_tokens": max_new_tokens}


def default_grid(device: torch.device, max_context: int, quick: bool = False, max_batch: int = 8) -> dict:
    """A grid that spans what tune searches: batch 1..max_batch (powers of two, and max_batch),
    1..k_max+1 tokens, short to long context. `quick`: a smaller grid for the demo (4 coefficients
    need few points; the fit error says how few)."""
    batches = sorted({b for b in (1, 2, 4, 8) if b <= max_batch} | {max_batch})
    if quick:
        return {"batches": batches[:3], "token_counts": [1, 3, 7], "contexts": sorted({32, min(512, max_context)})}
    contexts = sorted({64, min(512, max_context), min(2048, max_context)})
    return {"batches": batches, "token_counts": [1, 2, 4, 6, 9], "contexts": contexts}


def with_dtype(knobs: Knobs, dtype: str) -> Knobs:
    return replace(knobs, weight_dtype=dtype)
