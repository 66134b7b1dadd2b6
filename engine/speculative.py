"""One speculative step: draft k tokens, verify them in one target forward, accept/reject, bonus token.

State between steps (per row b of the batch):
- `lengths[b]` = L committed tokens; the last committed token x[L-1] is in neither KV cache yet.
- the target cache holds positions 0 .. L-2; the draft cache 0 .. L-2, or only 0 .. L-3 when the
  previous step accepted all k drafts (d_k was never fed to the draft).

So each step starts the draft with a catch-up forward over the last c committed tokens, c = 1 or 2
(2 when some row accepted everything; rewriting x[L-2] in the other rows is harmless: same token,
same position). No extra forward either way. The target verifies [x[L-1], d_1 .. d_k]
at positions L-1 .. L-1+k; its logits at position L-1+i score d_{i+1}, and the logits at L-1+k give
the bonus token when every draft is accepted.

Lossless sampling (Leviathan et al. 2023, Chen et al. 2023): accept d_i with probability
min(1, p_i(d_i) / q_i(d_i)); at the first rejection sample from norm(max(0, p_i - q_i)); when all k
are accepted sample the bonus from p_{k+1}. Greedy is the temperature -> 0 limit: accept while
d_i == argmax p_i, then take argmax p at the first mismatch (or after the last draft).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .cache import StepBuffers
from .forward import Decoder


class Sampler:
    """Greedy (argmax) or lossless speculative sampling at a temperature, with its own RNG."""

    def __init__(self, mode: str = "greedy", temperature: float = 1.0, seed: int = 0, device="cpu"):
        self.greedy = mode == "greedy"
        self.temperature = temperature
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def to_probs_(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax(logits / T) in place: the buffer turns from logits into probabilities."""
        logits.div_(self.temperature)
        logits.sub_(logits.amax(-1, keepdim=True)).exp_()
        return logits.div_(logits.sum(-1, keepdim=True))

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """A token per row from logits [B, V] (turned into probabilities in place when sampling)."""
        if self.greedy:
            return logits.argmax(-1)
        probs = self.to_probs_(logits)
        return torch.multinomial(probs.float(), 1, generator=self.generator).squeeze(1)

    def accept(self, drafts: torch.Tensor, q: torch.Tensor, target_logits: torch.Tensor,
               q_ids: torch.Tensor | None = None, d2t: torch.Tensor | None = None):
        """(accepted [B] in 0..k, bonus [B]) from drafts [B, k], the draft's q [B, k, V] and the
        target's logits [B, k+1, V]. A head over a trimmed vocabulary: q [B, k, V_d], `q_ids` the
        drafts as its ids, `d2t` [V_d] its ids in the target's (tokens outside have q = 0)."""
        B, k = drafts.shape
        if self.greedy:
            best = target_logits.argmax(-1)  # [B, k+1]
            accepted = (drafts == best[:, :k]).cumprod(1).sum(1)
            return accepted, best.gather(1, accepted.unsqueeze(1)).squeeze(1)
        p = self.to_probs_(target_logits)
        p_d = p[:, :k].gather(2, drafts.unsqueeze(2)).squeeze(2).float()
        q_d = q.gather(2, (drafts if q_ids is None else q_ids).unsqueeze(2)).squeeze(2).float()
        r = torch.rand((B, k), generator=self.generator, device=drafts.device)
        accepted = (r * q_d < p_d).cumprod(1).sum(1)  # r < p/q without dividing; q(d) > 0 as d ~ q
        rows = torch.arange(B, device=drafts.device)
        p_n = p[rows, accepted].float()  # [B, V]: p at the first rejected draft, or p_{k+1}
        rejected = (accepted < k).unsqueeze(1)
        q_n = q[rows, accepted.clamp(max=k - 1)].float() * rejected  # no q after the last draft
        residual = (p_n - q_n if d2t is None else p_n.index_add(1, d2t, q_n, alpha=-1)).clamp_(min=0)
        empty = residual.sum(1, keepdim=True) <= 0  # p == q up to rounding: then p itself
        residual = torch.where(empty, p_n, residual)
        return accepted, torch.multinomial(residual, 1, generator=self.generator).squeeze(1)

    def accept_proposals(self, drafts: torch.Tensor, counts: torch.Tensor, target_logits: torch.Tensor):
        """`accept` for deterministic proposals (n-gram: q = one-hot at d_i): row b proposes
        drafts[b, : counts[b]] (the rest is padding, never accepted). Sampling accepts d_i with
        probability min(1, p_i(d_i) / 1) and resamples a rejection from norm(max(0, p_i - q_i)),
        which is p_i with d_i removed; after the last proposal the bonus is sampled from p itself."""
        B, T = drafts.shape
        proposed = torch.arange(T, device=drafts.device) < counts.unsqueeze(1)  # [B, T]
        if self.greedy:
            best = target_logits.argmax(-1)  # [B, T+1]
            accepted = ((drafts == best[:, :T]) & proposed).cumprod(1).sum(1)
            return accepted, best.gather(1, accepted.unsqueeze(1)).squeeze(1)
        p = self.to_probs_(target_logits)
        rows = torch.arange(B, device=drafts.device)
        r = torch.rand((B, T), generator=self.generator, device=drafts.device)
        p_d = p[:, :T].gather(2, drafts.unsqueeze(2)).squeeze(2).float()
        accepted = ((r < p_d) & proposed).cumprod(1).sum(1)
        p_n = p[rows, accepted].float()  # [B, V]: p at the first rejected proposal, or after the last
        if T:
            rejected = accepted < counts  # a proposal was rejected here: remove its token
            d_n = drafts[rows, accepted.clamp(max=T - 1)]
            p_n[rows, d_n] = p_n[rows, d_n] * ~rejected
        empty = p_n.sum(1, keepdim=True) <= 0  # cannot happen (p(d) = 1 is always accepted): then p
        p_n = torch.where(empty, p[rows, accepted].float(), p_n)
        return accepted, torch.multinomial(p_n, 1, generator=self.generator).squeeze(1)


@dataclass
class StepOutput:
    accepted: torch.Tensor  # [B] drafts accepted per row, 0..k
    tokens: torch.Tensor  # [B, k+1]: row b's new tokens are tokens[b, : accepted[b] + 1]
    draft_s: float  # seconds in block 1
    verify_s: float  # seconds in block 2
    accept_s: float  # seconds in blocks 3 and 4
    # each row's first new token (the target's at depth 1) as the drafter ranked it among its depth-1
    # candidates: 1 .. RANKED, 0 when not among them (no proposal included); None when not measured
    ranks: list[int] | None = field(default=None, kw_only=True)


def speculative_step(
    target: Decoder, draft: Decoder, buf: StepBuffers, last: torch.Tensor, lengths: list[int],
    sampler: Sampler, sync=lambda: None,
) -> StepOutput:
    """Advance every row by its accepted drafts plus one token. `last` [B, c] holds each row's last
    c committed tokens (c = 1 or 2, the draft's catch-up), `lengths` the committed counts on the host
    (buf.lengths holds them on the device)."""
    (B, c), k = last.shape, buf.draft_tokens.shape[1]
    L = buf.lengths[:B]
    drafts, q, logits = buf.draft_tokens[:B], buf.draft_logits[:B], buf.target_logits[:B]
    t0 = time.perf_counter()

    # window layers of a model that also has full ones read their own masks (None: no such layers)
    verify_window, draft_window = buf.tensors.get("verify_mask_sliding"), buf.tensors.get("draft_mask_sliding")

    # 1. draft: catch up on the last c committed tokens, then propose d_1 .. d_k, one token per forward
    # [B, 1, k+1 >= 2, S]: room for two queries
    mask, window = (buf.verify_mask, verify_window) if c > 1 else (buf.draft_mask, draft_window)
    hidden = draft.forward(last, [n - c for n in lengths], mask, L - c, window)[:, -1]
    for i in range(k):
        if i:
            hidden = draft.forward(drafts[:, i - 1 : i], [n + i - 1 for n in lengths], buf.draft_mask, L + i - 1,
                                   draft_window)[:, -1]
        draft.logits(hidden, out=q[:, i])
        drafts[:, i] = sampler.pick(q[:, i])
    sync()
    t1 = time.perf_counter()

    # 2. verify: one target forward over x[L-1], d_1 .. d_k, logits at all k+1 positions
    hidden = target.forward(torch.cat([last[:, -1:], drafts], 1), [n - 1 for n in lengths], buf.verify_mask, L - 1,
                            verify_window)
    target.logits(hidden, out=logits)
    sync()
    t2 = time.perf_counter()

    # 3. accept/reject: the longest prefix of drafts the target agrees with (greedy) or accepts (sampling)
    accepted, bonus = sampler.accept(drafts, q, logits)

    # 4. bonus token: the target's own token after the accepted prefix; each row advances by accepted + 1
    return advance(drafts, accepted, bonus, L, t0, t1, t2)


def depth1_ranks(candidates: list[list[int]], firsts: list[int]) -> list[int]:
    """Rank (1-based) of each row's depth-1 target token among that row's depth-1 candidates, best first;
    0 when it is not among them. What a tree's siblings would have caught (drafting/trees.py sibling_shares)."""
    return [c.index(t) + 1 if t in c else 0 for c, t in zip(candidates, firsts)]


def advance(drafts: torch.Tensor, accepted: torch.Tensor, bonus: torch.Tensor, L: torch.Tensor,
            t0: float, t1: float, t2: float) -> StepOutput:
    """A chain step's end (draft model, EAGLE head, n-gram): the bonus token after each row's accepted
    prefix of drafts [B, k]; the device lengths L advance by accepted + 1; t0..t2 the blocks' start times."""
    tokens = torch.cat([drafts, bonus.unsqueeze(1)], 1)
    tokens.scatter_(1, accepted.unsqueeze(1), bonus.unsqueeze(1))
    L += accepted + 1
    return StepOutput(accepted.cpu(), tokens.cpu(), t1 - t0, t2 - t1, time.perf_counter() - t2)
