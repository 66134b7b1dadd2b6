"""Token-tree verification: one target forward over a tree of T draft tokens, one accepted root path.

A tree, per row b: T nodes, tokens [B, T] and parents [B, T]; parents[b, i] is the index of node i's
parent, or -1 for a child of the last committed token x[L-1] (the root). The depth of a node is 1 + its
parent's (the root's is 0). counts[b] nodes of row b are real; the rest is padding (children of the
root that are never accepted). Drafting is the caller's (engine/ngram.py; EAGLE heads): this module
only verifies.

1. Verify (`tree_inputs`, `tree_verify`): inputs [x[L-1], node 0 .. node T-1] written to slots
   L-1 .. L-1+T (slot = L-1 + 1 + node index, by index, not by position), at positions (L-1) + depth,
   under a bool mask [B, 1, T+1, R] in the plan's verify_mask buffer: every query sees the committed
   slots 0 .. L-1 (x[L-1] included) and, among the new slots, only itself and its ancestors (tree
   attention: SpecInfer, Miao et al. 2023, sec. 4; EAGLE's tree mask). The logits at input j
   (j = 0: x[L-1], j = i + 1: node i) are the target's next-token distribution after that path, so they
   score node j-1's children.
2. Accept: greedy walks from the root to the child whose token is the argmax at the current node,
   while one is; the bonus token is the argmax at the last accepted node. Sampling is recursive
   rejection sampling with deterministic siblings (SpecInfer's multi-draft rule with q one-hot at each
   child): at a node with target distribution p, its children c_1, c_2, ... are tried in index order;
   c_j is accepted with probability p'(c_j), p' = p with the tokens of c_1 .. c_{j-1} removed and
   renormalised; after the last child is rejected the bonus is drawn from p with every child's token
   removed. Each emitted token is then distributed as p (P(c_j) = p(c_j), P(x) = p(x) otherwise), and
   below an accepted child the same holds for its subtree: lossless for any tree the drafter builds
   without looking at the target's draws (tests/test_engine_tree.py: chi-square).
3. Compact (`StaticKVCache.move`): the K/V of the accepted nodes (slots L + idx) is moved to slots
   L .. L+n-1, so the cache invariant of engine/runtime.py holds again (slot == position, committed
   tokens contiguous). Rejected nodes' slots lie beyond the row's length and are rewritten before use.

Window (ring) layers are refused: their slot is the position (mod R), which a tree's slots are not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from specmemo_plan.errors import SpecMemoError

from .cache import StaticKVCache, StepBuffers
from .speculative import Sampler, StepOutput


@dataclass
class TreeStepOutput(StepOutput):
    paths: list[list[int]]  # per row: the accepted node indices from the root down (node i is verify input i+1)


def check_tree_cache(cache: StaticKVCache) -> None:
    """Refuse token trees on a cache with sliding-window (ring) layers (module docstring)."""
    if not cache.uniform_full:
        raise SpecMemoError(
            f"knobs.tree_topk: token trees on {cache.shape.name}, whose sliding-window layers keep a ring cache, "
            "are not supported by the engine", "plan a chain (drop --tree-topk)")


def ancestors(parents: torch.Tensor) -> torch.Tensor:
    """parents [B, T] -> bool [B, T+1, T+1] over inputs (0: x[L-1], i+1: node i): [b, j, i] iff input i
    is input j or one of its ancestors. Transitive closure by squaring: ceil(log2 T) products cover
    paths of up to T edges (a depth is at most T)."""
    B, T = parents.shape
    device = parents.device
    step = torch.eye(T + 1, device=device).expand(B, T + 1, T + 1).clone()  # [B, T+1, T+1] fp32 0/1
    up = torch.cat([torch.zeros((B, 1), dtype=torch.long, device=device), parents + 1], 1)  # [B, T+1]
    step.scatter_(2, up.unsqueeze(2), 1.0)
    for _ in range((T - 1).bit_length()):
        step = torch.bmm(step, step).clamp_(max=1.0)
    return step > 0


def tree_inputs(buf: StepBuffers, lengths: torch.Tensor, parents: torch.Tensor, read: int):
    """(positions [B, T+1], mask [B, 1, T+1, read] in buf.verify_mask) for the verify (module docstring).
    `lengths` [B] on the device; `read` = max(L) + T, the slots the forward reads."""
    B, T = parents.shape
    visible = ancestors(parents)  # [B, T+1, T+1]
    last = (lengths - 1).view(B, 1, 1, 1)
    positions = (lengths - 1).unsqueeze(1) + visible[:, :, 1:].sum(-1)  # (L-1) + depth
    mask = buf.verify_mask[:B, :, : T + 1, :read]
    torch.lt(torch.arange(read, device=mask.device), last.expand(B, 1, T + 1, 1), out=mask)  # committed 0 .. L-2
    slots = last + torch.arange(T + 1, device=mask.device)  # [B, 1, 1, T+1]: x[L-1]'s slot, the nodes'
    mask.scatter_(3, slots.expand(B, 1, T + 1, T + 1), visible.unsqueeze(1))
    return positions, mask


def tree_verify(target, buf: StepBuffers, last: torch.Tensor, lengths: list[int], tokens: torch.Tensor,
                parents: torch.Tensor | None, counts: list[int] | None, sampler: Sampler, sync=lambda: None,
                chain: bool = False, hidden_out: torch.Tensor | None = None) -> TreeStepOutput:
    """Verify a tree per row and advance each row by its accepted path plus one token.

    `last` [B, 1]: x[L-1]; `lengths` the committed counts on the host (buf.lengths holds them on the
    device, advanced here); tokens/parents [B, T] on the device; counts[b] real nodes (None: all T).
    `chain`: the caller knows every row's real nodes form a chain 0 -> 1 -> ... (parents may then be
    None): the verify takes the causal path, the tree's mask being the causal one. `hidden_out`
    [>= B, >= T+1, H] (an EAGLE head's draft_hidden_states): row b's first accepted + 1 entries get the
    target's last hidden states at x[L-1] and the accepted nodes, in path order. Returns accepted
    counts, tokens [B, T+1] (row b's new tokens are tokens[b, : accepted[b] + 1]) and the accepted
    node indices; draft_s is the caller's to set."""
    B, T = tokens.shape
    counts = [T] * B if counts is None else counts
    L = buf.lengths[:B]
    V = buf.target_logits.shape[-1]
    t0 = time.perf_counter()
    logits = buf.target_logits.view(-1)[: B * (T + 1) * V].view(B, T + 1, V)  # contiguous, rows first
    ids = torch.cat([last, tokens], 1) if T else last
    starts = [n - 1 for n in lengths]
    if chain or not T:
        hidden = target.forward(ids, starts, buf.verify_mask, L - 1, buf.tensors.get("verify_mask_sliding"))
        parents = None
    else:
        check_tree_cache(target.cache)
        positions, mask = tree_inputs(buf, L, parents, max(lengths) + T)
        hidden = target.forward(ids, starts, buf.verify_mask, L - 1, positions=positions, tree_mask=mask)
    target.logits(hidden, out=logits)
    sync()
    t1 = time.perf_counter()

    host_tokens = tokens.tolist()
    host_parents = parents.tolist() if parents is not None else [None] * B
    kids = [_children(host_parents[b], counts[b]) for b in range(B)]
    paths, bonus = _accept(sampler, logits, tokens, parents, host_tokens, kids)
    out = torch.zeros((B, T + 1), dtype=torch.long)
    for b, (path, token) in enumerate(zip(paths, bonus)):
        out[b, : len(path) + 1] = torch.tensor([host_tokens[b][i] for i in path] + [token])
    accepted = torch.tensor([len(p) for p in paths], dtype=torch.long)
    _compact(target.cache, lengths, paths)
    if hidden_out is not None:  # inputs 0 (x[L-1]) and 1 + path, padded with input 0
        picked = torch.tensor([[0] + [i + 1 for i in p] + [0] * (T - len(p)) for p in paths], device=hidden.device)
        hidden_out[:B, : T + 1].copy_(hidden.gather(1, picked.unsqueeze(2).expand(-1, -1, hidden.shape[-1])))
    L += accepted.to(L.device) + 1
    return TreeStepOutput(accepted, out, 0.0, t1 - t0, time.perf_counter() - t1, paths)


def _compact(cache: StaticKVCache, lengths: list[int], paths: list[list[int]]) -> None:
    """Accepted node idx sits at slot L + idx; its position is L + (its rank on the path)."""
    rows = [b for b, p in enumerate(paths) if p != list(range(len(p)))]  # chains are in place already
    if rows:
        cache.move(rows, [[lengths[b] + i for i in paths[b]] for b in rows],
                   [list(range(lengths[b], lengths[b] + len(paths[b]))) for b in rows])


def _children(parents: list[int] | None, count: int) -> dict[int, list[int]]:
    """{node (-1: root): its real children in index order}."""
    kids: dict[int, list[int]] = {}
    for i in range(count):
        kids.setdefault(i - 1 if parents is None else parents[i], []).append(i)
    return kids


def _accept(sampler: Sampler, logits: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor | None,
            host_tokens: list[list[int]], kids: list[dict]) -> tuple[list[list[int]], list[int]]:
    """(accepted path per row, bonus token per row) from the verify logits [B, T+1, V] (module docstring).
    `kids[b]`: row b's children per node (_children)."""
    B, T = tokens.shape
    if sampler.greedy:
        best = logits.argmax(-1).tolist()  # [B, T+1]
        paths, bonus = [], []
        for b in range(B):
            path, cur = [], -1
            while True:
                want = best[b][cur + 1]
                cur = next((c for c in kids[b].get(cur, []) if host_tokens[b][c] == want), None)
                if cur is None:
                    break
                path.append(cur)
            paths.append(path)
            bonus.append(want)
        return paths, bonus

    p = sampler.to_probs_(logits)  # [B, T+1, V], in place
    V = p.shape[-1]
    p_node = draws = [[]] * B
    if T:
        up = (parents + 1) if parents is not None else torch.arange(T, device=p.device).expand(B, T)
        p_node = p.reshape(B, -1).gather(1, up * V + tokens).tolist()  # [B, T]: p(node's token) at its parent
        draws = torch.rand((B, T), generator=sampler.generator, device=p.device).tolist()
    paths, at, removed = [], [], []
    for b in range(B):
        path, cur = [], -1
        while True:
            gone, mass, nxt = set(), 0.0, None
            for c in kids[b].get(cur, []):
                t = host_tokens[b][c]
                if t in gone:  # a repeated sibling: its token is already removed, p'(t) = 0
                    continue
                if draws[b][c] * (1.0 - mass) < p_node[b][c]:  # r < p(t) / (1 - removed mass)
                    nxt = c
                    break
                gone.add(t)
                mass += p_node[b][c]
            if nxt is None:
                break
            path.append(nxt)
            cur = nxt
        paths.append(path)
        at.append(cur + 1)
        removed.append(sorted(gone))
    rows = torch.arange(B, device=p.device)
    residual = p[rows, torch.tensor(at, device=p.device)].float()  # [B, V]: p at each row's last accepted node
    flat = [(b, t) for b, ts in enumerate(removed) for t in ts]
    if flat:
        r, t = torch.tensor(flat, device=p.device).t()
        residual[r, t] = 0.0
    empty = residual.sum(1, keepdim=True) <= 0  # every token proposed and rejected: only by rounding; then p
    residual = torch.where(empty, p[rows, torch.tensor(at, device=p.device)].float(), residual)
    return paths, torch.multinomial(residual, 1, generator=sampler.generator).squeeze(1).tolist()
