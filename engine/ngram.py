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

Trees (knobs.tree top-k > 1: `propose_tree`, `ngram_tree_step`): every earlier occurrence of the
longest matching n-gram contributes its continuation (up to the tree's depth); merged into a trie,
occurrences followed by different tokens become siblings. The chain above is kept first; the other
nodes best-first by the occurrences through them, at most top-k children per node and T nodes
(knobs.draft_length). engine/tree.py verifies the tree in one forward (tree mask, depth positions)
and moves the accepted path's K/V into place; greedy output is plain decoding's, sampling lossless.

Buffers are the plan's (specmemo_plan/drafting/buffers.py, method "ngram"): candidate_tokens [B, T]
int64 (+ candidate_parents [B, T] int64 for a tree), target_logits [B, T+1, V] fp32 (the serving
engines' sampler dtype), verify masks, lengths.
"""

from __future__ import annotations

import heapq
import time

import numpy as np
import torch

from specmemo_plan.drafting.trees import RANKED, TreeShape

from .cache import StepBuffers
from .forward import Decoder
from .speculative import Sampler, StepOutput, advance, depth1_ranks
from .tree import TreeStepOutput, tree_verify

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
    found = _longest_match(a, max_n, min_n)
    if found is None:
        return []
    n, starts = found
    i = _chain_start(starts, n, k, len(a))
    return a[i + n : i + n + k].tolist()


def _longest_match(a: np.ndarray, max_n: int, min_n: int) -> tuple[int, np.ndarray] | None:
    """(n, starts of the earlier occurrences of the last n tokens, ascending) for the longest n in
    max_n .. min_n that occurs earlier; None when none does."""
    L = len(a)
    for n in range(min(max_n, L - 1), min_n - 1, -1):
        # start i of an earlier occurrence: a[i : i+n] == a[L-n :], with i + n <= L - 1 (a token follows)
        match = np.ones(L - n, dtype=bool)
        for j in range(n):
            match &= a[j : L - n + j] == a[L - n + j]
        starts = np.flatnonzero(match)
        if starts.size:
            return n, starts
    return None


def _chain_start(starts: np.ndarray, n: int, k: int, L: int) -> int:
    """The occurrence a chain copies: the most recent followed by k tokens, else the earliest."""
    full = starts[starts + n + k <= L]
    return int(full[-1]) if full.size else int(starts[0])


def propose_tree(tokens: list[int] | np.ndarray, tree: TreeShape, max_n: int = NGRAM_MAX,
                 min_n: int = NGRAM_MIN) -> tuple[list[int], list[int]]:
    """(tokens, parents) of up to tree.tokens nodes, depth <= tree.depth, <= tree.topk children per node:
    the continuations (up to depth tokens) of every earlier occurrence of the longest matching suffix
    n-gram, merged into a trie. The chain `propose` would give (k = depth) is kept first; the other
    nodes best-first by how many occurrences pass through them (the empirical path probability, the
    n-gram counterpart of EAGLE-2's path score), ties to the most recent. A node's children beyond its
    top-k by that order are dropped. Parents come before children (-1: a child of the last token)."""
    a = np.asarray(tokens, dtype=np.int64)
    found = _longest_match(a, max_n, min_n)
    if found is None:
        return [], []
    n, starts = found
    L, depth = len(a), tree.depth
    chain_at = _chain_start(starts, n, depth, L)
    offsets = starts[:, None] + n + np.arange(depth)  # [S, depth]
    conts = np.where(offsets < L, a[np.minimum(offsets, L - 1)], -1)  # -1: past the end
    # per distinct continuation: occurrences, and the most recent one (starts ascend)
    uniq, first, counts = np.unique(conts[::-1], axis=0, return_index=True, return_counts=True)
    latest = starts[::-1][first]
    chain = tuple(conts[int(np.searchsorted(starts, chain_at))].tolist())
    stats: dict[tuple, list[int]] = {}  # prefix -> [in the chain, occurrences, most recent]
    for row, c, last in zip(uniq.tolist(), counts.tolist(), latest.tolist()):
        for d in range(1, depth + 1):
            if row[d - 1] < 0:
                break
            s = stats.setdefault(tuple(row[:d]), [int(chain[:d] == tuple(row[:d])), 0, -1])
            s[1] += c
            s[2] = max(s[2], last)
    kids: dict[tuple, list[tuple]] = {}
    for key in stats:
        kids.setdefault(key[:-1], []).append(key)
    for key, keys in kids.items():  # each node's top-k children by priority
        kids[key] = sorted(keys, key=lambda k: stats[k], reverse=True)[: tree.topk]
    out_tokens, parents, index = [], [], {(): -1}
    heap = [(_neg(stats[k]), k) for k in kids.get((), [])]
    heapq.heapify(heap)
    while heap and len(out_tokens) < tree.tokens:
        _, key = heapq.heappop(heap)
        index[key] = len(out_tokens)
        out_tokens.append(key[-1])
        parents.append(index[key[:-1]])
        for child in kids.get(key, []):
            heapq.heappush(heap, (_neg(stats[child]), child))
    return out_tokens, parents


def _neg(priority: list[int]) -> tuple[int, ...]:
    return tuple(-v for v in priority)  # heapq pops the smallest


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
               k: int, sync=lambda: None, ranks: bool = False) -> StepOutput:
    """Advance every row by its accepted proposals plus one token. `seqs`: each row's tokens so far
    (len == lengths[b]); buf.lengths holds the lengths on the device. `ranks`: also rank the depth-1 target
    token among the tree's depth-1 candidates (propose_tree's order; StepOutput.ranks), as profiling does."""
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
    out = advance(cand, accepted, bonus, L, t0, t1, t2)
    if ranks:
        out.ranks = depth1_ranks([_depth1(seq, p) for seq, p in zip(seqs, proposals)], out.tokens[:, 0].tolist())
    return out


def _depth1(seq: list[int], proposal: list[int]) -> list[int]:
    """The depth-1 candidates best first: the chain's first proposal, then the trie's other first tokens in
    propose_tree's order (what a tree of top-k RANKED would offer beside the chain)."""
    head = proposal[:1]
    rest = [t for t in propose_tree(seq, TreeShape(1, RANKED, RANKED))[0] if t not in head]
    return (head + rest)[:RANKED]


def ngram_tree_step(target: Decoder, buf: StepBuffers, seqs: list[list[int]], lengths: list[int], sampler: Sampler,
                    tree: TreeShape, sync=lambda: None) -> TreeStepOutput:
    """`ngram_step` with a token tree per row (propose_tree), verified by engine/tree.py; rows whose
    trees are all chains take the chain's causal verify (the same forward as ngram_step's)."""
    B = len(seqs)
    t0 = time.perf_counter()
    trees = [propose_tree(seq, tree) for seq in seqs]
    T = max(len(t) for t, _ in trees)
    counts = [len(t) for t, _ in trees]
    chain = all(p == list(range(-1, len(p) - 1)) for _, p in trees)
    cand = buf.candidate_tokens[:B, :T]
    parents = None
    if T:  # padding: children of the root, never accepted (counts)
        cand.copy_(torch.tensor([t + [0] * (T - len(t)) for t, _ in trees]))
        if not chain:
            parents = buf.candidate_parents[:B, :T]
            parents.copy_(torch.tensor([p + [-1] * (T - len(p)) for _, p in trees]))
    last = torch.tensor([[seq[-1]] for seq in seqs], device=buf.lengths.device)
    t1 = time.perf_counter()
    out = tree_verify(target, buf, last, lengths, cand, parents, counts, sampler, sync, chain=chain)
    out.draft_s = t1 - t0
    return out
