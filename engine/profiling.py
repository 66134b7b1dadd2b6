"""Measurements the autotuner fits: forward latencies on the device and the pair's acceptance.

Latency: the engine's own forward (static cache, per-row positions, logits only where used) of
B sequences x n new tokens over S cached positions, with warm-up, device synchronisation,
repeats and the median. Acceptance: the histogram of accepted lengths per step of greedy
speculative decoding at k_max on the calibration prompts, replayed from one plain run of the
target and one teacher-forced pass of the draft (measure_acceptance).
"""

from __future__ import annotations

import importlib.resources
import json
import statistics
import sys
import time
from dataclasses import replace
from typing import Sequence

import torch

from specmemo_plan.autotune import LatencySample
from specmemo_plan.memory import Knobs
from specmemo_plan.plan import Generation, make_plan

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
    return median_ms(lambda: decoder.logits(decoder.forward(ids, starts, mask), out=logits), device, repeats, warmup)


def median_ms(run, device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall ms of `run()` over `repeats` calls after `warmup` untimed ones, the device synchronised
    around each."""
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        run()
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_latencies(loaded: LoadedModel, role: str, dtype: str, batches, token_counts, contexts,
                      repeats: int = 5, progress: bool = True, timer=None) -> list[LatencySample]:
    """The grid of (batch, tokens, context) for one model, with a progress bar on stderr. Interleaved:
    `repeats` rounds, each timing every point once after one untimed forward (the order reversed every other
    round), the median over rounds kept, so load that drifts while the grid runs (this shared machine's
    B=1 decode ranged 24-42 ms between three back-to-back grids) spreads over every point instead of
    inflating the ones timed while it lasted. `timer(b, n, c)`: one timed forward (default time_forward)."""
    from tqdm import tqdm

    timer = timer or (lambda b, n, c: time_forward(loaded, dtype, b, n, c, repeats=1, warmup=1))
    grid = [(b, n, c) for b in batches for n in token_counts for c in contexts]
    times: dict[tuple, list[float]] = {point: [] for point in grid}
    for r in tqdm(range(repeats), desc=f"profiling {role}", file=sys.stderr, disable=not progress, leave=False):
        for point in grid if r % 2 == 0 else grid[::-1]:
            times[point].append(timer(*point))
    return [LatencySample(role, b, n, c, statistics.median(times[(b, n, c)])) for b, n, c in grid]


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


def replay_histogram(matches: Sequence[bool], k: int, max_new: int) -> list[int]:
    """Accepted drafts per step (index 0..k) of greedy speculative decoding, replayed.

    matches[j]: the draft, fed the prompt and the target's greedy tokens before j, predicts the
    target's token j (token 0 comes from the prefill, so matches[0] is never read). The engine's
    step from p (tokens 0..p-1 produced) accepts the run of agreements at p, p+1, ... up to k and
    adds the target's own token after it, so the next step starts at p + n + 1. Rows stop at
    max_new tokens or at the end of `matches` (the target's EOS)."""
    histogram = [0] * (k + 1)
    end = min(max_new, len(matches))
    p = 1
    while p < end:
        n = 0
        while n < k and p + n < len(matches) and matches[p + n]:
            n += 1
        histogram[n] += 1
        p += n + 1
    return histogram


@torch.inference_mode()
def draft_agreement(draft: LoadedModel, dtype: str, prompt: list[int], answer: list[int]) -> list[bool]:
    """matches[j] = (the draft's argmax after prompt + answer[:j]) == answer[j], for every j, from
    one forward of the draft over prompt + answer (its own static cache, the engine's Decoder)."""
    device = next(draft.model.parameters()).device
    seq = prompt + answer
    cache = StaticKVCache(draft.shape, 1, len(seq), dtype, device)
    decoder = Decoder(draft.model, cache)
    mask = torch.empty((1, 1, len(seq), len(seq)), dtype=torch.bool, device=device)
    hidden = decoder.forward(torch.tensor([seq], device=device), [0], mask)  # [1, P+L, H]
    at = hidden[0, len(prompt) - 1 : len(seq) - 1]  # [L, H]: the positions that predict answer[0..L-1]
    logits = torch.empty((len(answer), draft.shape.vocab_size), dtype=decoder.head.dtype, device=device)
    predicted = decoder.logits(at, out=logits).argmax(-1)  # [L]
    return (predicted == torch.tensor(answer, device=device)).tolist()


def greedy_answers(target: LoadedModel, target_ref: str, dtype: str, conversations: list[list[str]],
                   max_new_tokens: int, context: int, batch: int = 8, lookahead: int = 0,
                   progress: bool = True) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of every turn: the target answers greedily with the engine's plain
    decoding, `batch` rows at a time; a later turn's prompt holds the earlier turns and their
    answers of max_new_tokens. Answers run `lookahead` tokens further (not kept in the history)."""
    from tqdm import tqdm

    from .chat import render_ids, render_text
    from .runtime import Engine
    from .workflow import _this_device

    device = next(target.model.parameters()).device
    context = min(context, target.shape.max_position_embeddings)  # a plan never runs past the target's positions
    knobs = Knobs(batch_size=batch, max_context=context, draft_length=0, weight_dtype=dtype)
    spec, _, _ = _this_device(str(device))  # the engine checks a plan's device kind and name
    budget = spec.total_memory_bytes
    if device.type == "cuda":  # the engine checks the budget against torch's total, which can be below NVML's
        budget = min(budget, torch.cuda.get_device_properties(device).total_memory)
    plan = make_plan(target_ref, target.shape, None, None, knobs, spec, budget,
                     generation=Generation(max_new_tokens=max_new_tokens))
    engine = Engine(plan, device=str(device), target=target)
    history: list[list[tuple]] = [[] for _ in conversations]  # per conversation: (user, reply) so far
    pairs = []
    bar = tqdm(total=sum(map(len, conversations)), desc="target answers", file=sys.stderr, disable=not progress, leave=False)
    for turn in range(max(map(len, conversations))):
        todo = []
        for i, conv in enumerate(conversations):
            if turn < len(conv):
                user = conv[turn] if engine.real_tokenizer else engine.encode(conv[turn])
                turns = history[i] + [(user, None)]
                ids = render_text(engine, turns) if engine.real_tokenizer else render_ids(turns)
                if len(ids) + max_new_tokens + lookahead <= context:  # a conversation too long for the context ends here
                    todo.append((i, user, ids))
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            result = engine.generate([ids for _, _, ids in chunk], max_new_tokens + lookahead)
            for (i, user, ids), out in zip(chunk, result.outputs):
                pairs.append((ids, out.token_ids))
                reply = out.token_ids[:max_new_tokens]
                history[i].append((user, engine.decode(reply).strip() if engine.real_tokenizer else reply))
            bar.update(len(chunk))
    bar.close()
    return pairs


def measure_acceptance(target: LoadedModel, draft: LoadedModel, target_ref: str, dtype: str, k_max: int = 8,
                       num_prompts: int = 16, max_new_tokens: int = 48, context: int = 1024, batch: int = 8,
                       conversations: list[list[str]] | None = None, progress: bool = True) -> tuple[list[int], dict]:
    """Histogram of accepted drafts per step (index 0..k_max) of greedy speculative decoding on the
    calibration prompts (multi-turn ones turn by turn), without running it.

    In greedy decoding the draft only ever sees the target's own tokens, so what it would accept
    follows from (1) the target's greedy answers, generated with batched plain decoding, and
    (2) one teacher-forced pass of the draft over each prompt + answer; replay_histogram walks the
    engine's steps over the agreements. Equal to running the engine at k_max up to floating-point
    near-ties (tests/test_acceptance_replay.py), and much cheaper: no draft pass per token, no k+1-
    token verify, a batch of rows per target step. Answers run k_max tokens past max_new_tokens so
    the last step's run is seen whole."""
    t0 = time.perf_counter()
    conversations = conversations or [p["turns"] for p in calibration_prompts(num_prompts)]
    pairs = greedy_answers(target, target_ref, dtype, conversations, max_new_tokens, context, batch, k_max, progress)
    t1 = time.perf_counter()
    histogram = [0] * (k_max + 1)
    tokens = 0
    for prompt, answer in pairs:
        steps = replay_histogram(draft_agreement(draft, dtype, prompt, answer), k_max, max_new_tokens)
        histogram = [a + b for a, b in zip(histogram, steps)]
        tokens += min(len(answer), max_new_tokens)
    info = {"prompts": len(conversations), "turns": len(pairs), "new_tokens": tokens, "k_max": k_max,
            "max_new_tokens": max_new_tokens, "method": "replay", "target_seconds": t1 - t0,
            "draft_seconds": time.perf_counter() - t1}
    return histogram, info


def default_grid(device: torch.device, max_context: int, quick: bool = False, max_batch: int = 8) -> dict:
    """A grid that spans what tune searches: batch 1..max_batch (powers of two, and max_batch),
    1..k_max+1 tokens, short to long context. `quick`: a smaller grid for the demo, still with two
    samples per coefficient of the piecewise fit (the fit error says how good)."""
    batches = sorted({b for b in (1, 2, 4, 8) if b <= max_batch} | {max_batch})
    if quick:
        return {"batches": batches[:3], "token_counts": [1, 2, 4, 7], "contexts": sorted({32, min(512, max_context)})}
    contexts = sorted({64, min(512, max_context), max_context})  # the longest is the one asked for
    # 3 and 4 tokens both: this CPU's matrix kernels step between them (autotune.py's g)
    return {"batches": batches, "token_counts": [1, 2, 3, 4, 6, 9], "contexts": contexts}


def with_dtype(knobs: Knobs, dtype: str) -> Knobs:
    return replace(knobs, weight_dtype=dtype)
