"""EAGLE token trees: the head grows a tree of draft tokens, the target verifies it in one forward.

The tree is grown as EAGLE-2 does (Li et al. 2024, arXiv 2406.16858, sec. 4), with the plan's tree
(depth D, top-k K, T verified tokens) and buffers (specmemo_plan/drafting/buffers.py):
1. catch-up (engine/eagle.py catch_up): f0, the head's guess of h at L-1; its top-K tokens are the root's
   children, scored by their log-probability;
2. D - 1 expansions: the K frontier nodes of the last level go through the head in one forward of K pairs
   (their parent's feature, their token) at position L-2+j; each gives K children scored parent + log p;
   the K best of those K^2 are the next frontier. The frontier's head K/V lies beyond the row's true pairs,
   by index: level j's node i at slot L-1 + (j-1)K + i, and a node sees the true pairs, its ancestors'
   slots and itself (the plan's draft_mask [B, 1, K, S_d]). Every candidate's logits go to draft_logits
   [B, D*K, V_d] (level j's K rows), their scores to draft_scores [B, D, K^2];
3. the T candidates of highest score are the tree (a child scores below its parent: log p < 0, ties broken
   toward the shallower node, so the tree is prefix-closed), parents in draft_tree_parents;
4. engine/tree.py tree_verify: one target forward with the tree mask, greedy or recursive rejection
   sampling (the tree is chosen without looking at the target: lossless), K/V compaction, and the hidden
   states of x[L-1] and the accepted path into draft_hidden_states: the next step's pending pairs, exactly
   as after a chain.
The head's slots written by the expansions, L-1 .. L-2 + (D-1)K, must lie inside its C + T slots: trees with
(D-1)K > T + 1 are refused (check_tree_slots).
"""

from __future__ import annotations

import time

import torch

from specmemo_plan.drafting.trees import runtime_runs
from specmemo_plan.errors import SpecMemoError

from .cache import StepBuffers
from .eagle import HeadDrafter, catch_up
from .forward import Decoder
from .speculative import Sampler
from .tree import TreeStepOutput, tree_verify

DEPTH_TIEBREAK = 1e-6  # nats per level: equal scores prefer the shallower node, so parents rank first


def check_tree_slots(tree) -> None:
    if not runtime_runs("eagle", tree):
        raise SpecMemoError(f"knobs.tree_topk: an EAGLE tree of depth {tree.depth} and top-k {tree.topk} writes "
                            f"{(tree.depth - 1) * tree.topk} head slots past the context, the plan holds "
                            f"{tree.tokens + 1}", "plan more tree tokens (-k), or a smaller depth or top-k")


@torch.inference_mode()
def grow(head: HeadDrafter, buf: StepBuffers, f0: torch.Tensor, lengths: list[int], tree):
    """(tokens [B, T] as target ids, parents [B, T]) of each row's tree, from f0 [B, H] (module docstring)."""
    B, H = f0.shape
    K, D, T = tree.topk, tree.depth, tree.tokens
    dev = head.device
    L = buf.lengths[:B]
    logits, scores = buf.draft_logits[:B], buf.tensors["draft_scores"][:B]  # [B, D*K, V_d], [B, D, K*K]
    rows = torch.arange(B, device=dev)

    head.logits(f0, out=logits[:, 0])
    s, ids = logits[:, 0].float().log_softmax(-1).topk(K)  # [B, K]
    cand_ids, cand_score, cand_parent = [ids], [s], [torch.full((B, K), -1, device=dev)]
    front_ids, front_score, front_feat = ids, s, f0[:, None].expand(B, K, H)
    front_cand = torch.arange(K, device=dev).expand(B, K)  # candidate index of each frontier node
    front_anc = torch.empty((B, K, 0), dtype=torch.long, device=dev)  # ancestors' head slots
    offset = K
    for j in range(1, D):
        # the frontier (level j) through the head: K pairs at position L-2+j, slots L-1 + (j-1)K + i
        starts = [n - 1 + (j - 1) * K for n in lengths]
        head.cache.set_write(starts, K)
        R = head.cache.read_length
        own = (L - 1 + (j - 1) * K)[:, None] + torch.arange(K, device=dev)  # [B, K]
        mask = buf.draft_mask[:B, :, :K, :R]
        torch.lt(torch.arange(R, device=dev).expand(K, R), (L - 1)[:, None, None, None], out=mask)  # true pairs
        seen = torch.cat([front_anc, own[:, :, None]], 2)  # [B, K, j]
        mask[rows[:, None, None], 0, torch.arange(K, device=dev)[None, :, None], seen] = True
        positions = (L - 2 + j)[:, None].expand(B, K)
        feats = head.forward_at(head.to_target(front_ids), front_feat, positions, mask)  # [B, K, H]
        level = logits[:, j * K : (j + 1) * K]  # [B, K, V_d]
        head.logits(feats.reshape(B * K, H), out=level.reshape(B * K, -1))
        s2, ids2 = level.float().log_softmax(-1).topk(K)  # [B, K, K]
        score = (front_score[:, :, None] + s2 - DEPTH_TIEBREAK).flatten(1)  # [B, K*K]
        scores[:, j].copy_(score)
        cand_ids.append(ids2.flatten(1))
        cand_score.append(score)
        cand_parent.append(front_cand[:, :, None].expand(B, K, K).flatten(1))
        best = score.topk(K).indices  # [B, K]: the next frontier, among the K*K
        parent = best // K
        front_ids, front_score = ids2.flatten(1).gather(1, best), score.gather(1, best)
        front_feat = feats.gather(1, parent[:, :, None].expand(B, K, H))
        front_anc = torch.cat([front_anc.gather(1, parent[:, :, None].expand(B, K, j - 1)),
                               own.gather(1, parent)[:, :, None]], 2)
        front_cand = offset + best
        offset += K * K

    # the T best candidates, in score order (parents before children), parents remapped to that order
    all_ids, all_score, all_parent = (torch.cat(x, 1) for x in (cand_ids, cand_score, cand_parent))
    pick = all_score.topk(min(T, all_score.shape[1])).indices  # [B, T], best first
    where = torch.full_like(all_score, -1, dtype=torch.long)
    where.scatter_(1, pick, torch.arange(pick.shape[1], device=dev).expand_as(pick))
    parents = all_parent.gather(1, pick)
    parents = torch.where(parents < 0, parents, where.gather(1, parents.clamp(min=0)))
    if (parents >= torch.arange(pick.shape[1], device=dev)).any():
        raise RuntimeError("EAGLE tree not prefix-closed: a node ranks above its parent")
    return head.to_target(all_ids.gather(1, pick)), parents


def eagle_tree_step(target: Decoder, head: HeadDrafter, buf: StepBuffers, tokens: list[list[int]],
                    pending: list[int], lengths: list[int], sampler: Sampler, tree, sync=lambda: None) -> TreeStepOutput:
    """Advance every row by its accepted path plus one token (engine/eagle.py's contract)."""
    B = len(tokens)
    t0 = time.perf_counter()
    f0 = catch_up(head, buf, tokens, pending, lengths)
    ids, parents = grow(head, buf, f0, lengths, tree)
    T = ids.shape[1]
    buf.draft_tokens[:B, :T].copy_(ids)
    buf.tensors["draft_tree_parents"][:B, :T].copy_(parents)
    sync()
    draft_s = time.perf_counter() - t0
    last = torch.tensor([[seq[-1]] for seq in tokens], device=head.device)
    out = tree_verify(target, buf, last, lengths, buf.draft_tokens[:B, :T], buf.tensors["draft_tree_parents"][:B, :T],
                      None, sampler, sync, hidden_out=buf.draft_hidden_states)
    out.draft_s = draft_s
    return out
