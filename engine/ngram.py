"""n-gram drafting (prompt lookup): proposals from each sequence's own tokens, no weights, no draft KV.

The lookup runs on the host over the row's tokens so far (prompt + committed), longest match first:
for n from NGRAM_MAX down to NGRAM_MIN, the last n tokens are searched for an earlier occurrence, and
the up to k tokens that followed it are proposed (vLLM `ngram`: `prompt_lookup_max`/`prompt_lookup_min`;
transformers' `prompt_lookup_num_tokens`). Of the occurrences of the longest matching n-gram the most
recent one that is followed by k tokens is taken, else the one followed by the most (the earliest):
in a repeating span the latest occurrence is the one the text is copying.

The step (`ngram_step`) verifies the proposals in one target forward as the draft-model chain does
(engine/speculative.py): x[L-1] and T proposals, T the longest proposal in the batch (0: a plain
step). Rows with fewer proposals pad theirs; the acceptance stops at each row's own count.
Proposals are deterministic (q one-hot), so sampling accepts d with probability p(d) and resamples a
rejection from norm(max(0, p - q)): p with d removed (Sampler.accept_proposals).

Buffers are the plan's (specmemo_plan/drafting/buffers.py, method "ngram"): candidate_tokens [B, k]
int64, target_logits [B, k+1, V] fp32 (the serving engines' sampler dtype), verify masks, lengths.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .cache import StepBuffers
from .forward import Decoder
from .speculative import Sampler, StepOutput

# n-grams of NGRAM_MIN .. NGRAM_MAX tokens, longest first. vLLM searches prompt_lookup_min .. prompt_lookup_max
# (both 5 when unset; its n_gram docs set max 4), transformers' prompt lookup 2 .. 1 (max_matching_ngram_size=2).
# 4 .. 2 measured best here (SmolLM2-135M fp32, CPU): single-token matches are proposed on almost every step of
# ordinary text and mostly rejected, a wider verify for nothing (writing 0.83-0.87x plain with 4 .. 1,
# 0.92-0.96x with 4 .. 2; extraction 1.60-1.65x and 1.78-1.84x).
NGRAM_MAX = 4
NGRAM_MIN = 2


def propose(tokens: list[int] | np.ndarray, k: int, max_n: int = NGRAM_MAX, min_n: int = NGRAM_MIN) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the longest suffix n-gram
    (n = max_n .. min_n) of `tokens`; [] when no suffix of min_n tokens occurs earlier."""
    a = np.asarray(tokens, dtype=np.int64)
    L = len(a)
    for n in range(min(max_n, L - 1), min_n - 1, -1):
        # start i of an earlier occurrence: a[i : i+n] == a[L-n :], with i + n <= L - 1 (a token follows)
        match = np.ones(L - n, dtype=bool)
        for j in range(n):
            match &= a[j : L - n + j] == a[L - n + j]
        starts = np.flatnonzero(match)
        if starts.size == 0:
            continue
        full = starts[starts + n + k <= L]  # followed by k tokens
        i = int(full[-1]) if full.size else int(starts[0])
        return a[i + n : i + n + k].tolist()
    return []


class FloatLogitsDecoder(Decoder):
    """A decoder whose logits buffer is wider than its weights (the plan's fp32 target_logits beside
    fp16/bf16 weights): the product is taken in the weights' dtype and copied in (a transient of the
    rows written, [n, V] in the compute dtype)."""

    def logits(self, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out.copy_(super().logits(hidden, torch.empty(out.shape, dtype=self.head.dtype, device=out.device)))


def target_decoder(model: torch.nn.Module, cache, logits_dtype: torch.dtype) -> Decoder:
    """Decoder, or FloatLogitsDecoder when the logits buffer's dtype is not the weights'."""
    head = model.get_output_embeddings().weight
    return Decoder(model, cache) if head.dtype == logits_dtype else FloatLogitsDecoder(model, cache)


def ngram_step(target: Decoder, buf: StepBuffers, seqs: list[list[int]], lengths: list[int], sampler: Sampler,
               k: int, sync=lambda: None) -> StepOutput:
    """Advance every row by its accepted proposals plus one token. `seqs`: each row's tokens so far
    (len == lengths[b]); buf.lengths holds the lengths on the device."""
    B = len(seqs)
    t0 = time.perf_counter()
    proposals = [propose(seq, k) for seq in seqs]
    T = max(map(len, proposals))
    counts = torch.tensor([len(p) for p in proposals])
    cand = buf.candidate_tokens[:B, :T]
    if T:  # rows with fewer proposals are padded (their acceptance stops at their count)
        cand.copy_(torch.tensor([p + [0] * (T - len(p)) for p in proposals]))
    last = torch.tensor([[seq[-1]] for seq in seqs], device=buf.lengths.device)
    t1 = time.perf_counter()

    L = buf.lengths[:B]
    V = buf.target_logits.shape[-1]
    logits = buf.target_logits.view(-1)[: B * (T + 1) * V].view(B, T + 1, V)  # contiguous, rows first
    hidden = target.forward(torch.cat([last, cand], 1) if T else last, [n - 1 for n in lengths], buf.verify_mask,
                            L - 1, buf.tensors.get("verify_mask_sliding"))
    target.logits(hidden, out=logits)
    sync()
    t2 = time.perf_counter()

    accepted, bonus = sampler.accept_proposals(cand, counts.to(cand.device), logits)
    tokens = torch.cat([cand, bonus.unsqueeze(1)], 1)
    tokens.scatter_(1, accepted.unsqueeze(1), bonus.unsqueeze(1))
    L += accepted + 1
    return StepOutput(accepted.cpu(), tokens.cpu(), t1 - t0, t2 - t1, time.perf_counter() - t2)
