"""EAGLE-style head drafting: a one-layer head that drafts from the target's own hidden states.

The head (EAGLE-1, Li et al. 2024, arXiv 2401.15077) at position p reads the pair (h_p, x_{p+1}):
h_p the target's last hidden state at p (after its final norm: what its output layer reads), x_{p+1}
the token that followed. fc([embed(x_{p+1}); h_p]) goes through one Llama decoder layer (no
input norm on the first, as EAGLE's cnets1.py) with its own KV cache; the output f_{p+1} is a guess
of h_{p+1}, and its logits a guess of x_{p+2}. Drafting the next token feeds (f_{p+1}, guess) back in.
A trimmed head (the bundled one, train/train_eagle.py) scores only V_d tokens with its own lm_head
and maps them back through d2t; an untrimmed one uses the target's output layer (shared).

State between steps, per row (L committed tokens; the target cache holds 0 .. L-2, engine/speculative.py):
- the head cache holds true pairs for positions 0 .. L-3-n, where n = drafts the last verify accepted;
- `draft_hidden_states[b, : n+1]` holds the target's h at positions L-2-n .. L-2 from that verify
  (after a prefill: h at the last prompt position, n = 0), the pairs still to feed ("pending").
A step: (1) catch-up: one head forward over the n+1 pending pairs, tokens x_{L-1-n} .. x_{L-1}, rows
right-padded to the longest (padding lands beyond the row's frontier and is rewritten before any
query sees it); its output at the row's last real pair drafts d_1; (2) k-1 single-pair forwards
draft d_2 .. d_k; (3) the target verifies [x_{L-1}, d_1 .. d_k] as the chain does, its hidden
states go to draft_hidden_states (the next step's pending pairs); (4) accept and bonus, as the chain.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from specmemo_plan.drafting.trees import RANKED
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.models import ModelShape

from .attention import packed_attention
from .cache import StaticKVCache, StepBuffers
from .forward import Decoder
from .loading import LoadedModel, torch_dtype
from .speculative import Sampler, StepOutput, advance, depth1_ranks

# config.json keys that are the head's, not a LlamaConfig's
HEAD_KEYS = ("draft_vocab_size", "bias", "target_hidden_size")
WEIGHTS_FILE = "model.safetensors"


def llama_config(cfg: dict):
    """The LlamaConfig of the head's decoder layer(s), SDPA attention."""
    from transformers import LlamaConfig

    clean = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in HEAD_KEYS and k != "architectures"}
    config = LlamaConfig(**clean)
    config._attn_implementation = "sdpa"
    return config


class EagleHead(nn.Module):
    """fc over [embedding; hidden], Llama decoder layer(s), an lm_head over V_d tokens (None: the target's)."""

    def __init__(self, cfg: dict):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        self.config = llama_config(cfg)
        H, V = self.config.hidden_size, self.config.vocab_size
        V_d = cfg.get("draft_vocab_size", V)
        self.fc = nn.Linear(2 * H, H, bias=bool(cfg.get("bias", True)))
        self.layers = nn.ModuleList(LlamaDecoderLayer(self.config, i) for i in range(self.config.num_hidden_layers))
        self.layers[0].input_layernorm = nn.Identity()  # EAGLE-1: the fused input is not normalised
        self.rotary = LlamaRotaryEmbedding(self.config)
        self.lm_head = nn.Linear(H, V_d, bias=False) if V_d != V else None
        if self.lm_head is not None:  # d2t [V_d]: head id -> target id; in the engine, the plan's draft_d2t
            self.register_buffer("d2t", torch.arange(V_d), persistent=False)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, mask=None,
                cache=None) -> torch.Tensor:
        """embeds, hidden [B, n, H], positions [B, n] -> the head's features [B, n, H]."""
        x = self.fc(torch.cat([embeds, hidden], -1))  # [B, n, H]
        rope = self.rotary(x, positions)
        for layer in self.layers:
            x = layer(x, attention_mask=mask, position_ids=positions, cache=cache, use_cache=cache is not None,
                      position_embeddings=rope)
        return x


def load_head(ref: str, folder: Path | None, cfg: dict, shape: ModelShape, dtype: str, device, seed: int) -> LoadedModel:
    """The head of `cfg`: its weights from `folder`/model.safetensors (d2t included), else random
    (a head preset: config only). Weights are checked name by name against the layout."""
    torch.manual_seed(seed)
    head = EagleHead(cfg)
    random = folder is None or not (folder / WEIGHTS_FILE).is_file()
    if not random:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(folder / WEIGHTS_FILE)
        except (OSError, SafetensorError) as exc:
            raise SpecMemoError(f"cannot load the head weights in {folder}: {exc}",
                                "the file is damaged: copy or train the head again") from None
        d2t = state.pop("d2t", None)
        state.pop("embed_tokens.weight", None)  # EAGLE checkpoints may carry one: the target's is shared
        missing, unexpected = head.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SpecMemoError(f"{ref}: the head's weights do not match its config (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]})", "give the config.json saved with these weights")
        if head.lm_head is not None:
            if d2t is None or d2t.shape != head.d2t.shape:
                raise SpecMemoError(f"{ref}: a head with draft_vocab_size needs its d2t map in {WEIGHTS_FILE}",
                                    "save d2t with the weights (train/train_eagle.py does)")
            head.d2t.copy_(d2t)
    return LoadedModel(head.to(device=device, dtype=torch_dtype(dtype)).eval(), shape, random_weights=random)


def head_shape_of(plan, target: ModelShape) -> ModelShape:
    """The head's ModelShape as the plan was made (specmemo_plan.drafting.heads, by its layout)."""
    from specmemo_plan.drafting.heads import head_shape

    return head_shape("eagle", plan.draft.ref, target, plan.knobs.embedding_policy)


def load_plan_head(plan, shape: ModelShape, device, seed: int) -> LoadedModel:
    folder, cfg = read_head_folder(plan.draft.ref)
    return load_head(plan.draft.ref, folder, cfg, shape, plan.knobs.draft_dtype, device, seed)


def read_head_folder(ref: str) -> tuple[Path | None, dict]:
    """(folder holding the weights or None, config dict) of a head reference."""
    from specmemo_plan.drafting.heads import read_head_config
    from specmemo_plan.models import bundled_path

    cfg = read_head_config(ref)
    path = bundled_path(ref.split(":", 1)[1]) if ref.startswith("bundled:") else Path(ref).expanduser()
    folder = path if path.is_dir() else (path.parent if path.is_file() else None)
    return folder, cfg


class HeadDrafter:
    """The head over its static cache, reading the target's embedding (shared) and, untrimmed, its output layer."""

    def __init__(self, head: EagleHead, target: Decoder, cache: StaticKVCache, d2t: torch.Tensor | None):
        self.head, self.cache = head, cache
        self.embed = target.model.get_input_embeddings()
        self.out = head.lm_head.weight if head.lm_head is not None else target.head  # [V_d, H]
        self.d2t = d2t  # [V_d] int64 (the plan's draft_d2t buffer) or None: ids are the target's
        if d2t is not None:
            d2t.copy_(head.d2t)
            head.d2t = d2t  # one copy, the plan's
        self.device = self.out.device

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor, starts: list[int], start_tensor: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Features [B, n, H] of pairs (hidden [B, n, H], tokens [B, n]) at positions starts[b] + j;
        `mask` a bool buffer [B, 1, >= n, >= R] filled in place, as engine/forward.py does."""
        n = tokens.shape[1]
        positions = start_tensor.unsqueeze(1) + torch.arange(n, device=self.device)  # [B, n]
        self.cache.set_write(starts, n)
        read = self.cache.read_length
        attention = mask[: tokens.shape[0], :, :n, :read]
        torch.le(torch.arange(read, device=self.device), positions[:, None, :, None], out=attention)
        return self.forward_at(tokens, hidden, positions, attention)

    def forward_at(self, tokens: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
                   attention: torch.Tensor) -> torch.Tensor:
        """`forward` with the positions [B, n] and the mask [B, 1, n, R] given (a tree's nodes: slots by
        index, engine/eagle_tree.py); the cache's write is set by the caller."""
        dtype = self.head.fc.weight.dtype
        with packed_attention(self.head.config):
            return self.head(self.embed(tokens).to(dtype), hidden.to(dtype), positions, attention, self.cache)

    def logits(self, features: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """features [B, H] -> out [B, V_d]."""
        return torch.matmul(features, self.out.t(), out=out)

    def to_target(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if self.d2t is None else self.d2t[ids]


def catch_up(head: HeadDrafter, buf: StepBuffers, tokens: list[list[int]], pending: list[int],
             lengths: list[int]) -> torch.Tensor:
    """One head forward over each row's pending pairs (right-padded to the longest): [B, H], the feature at
    each row's last real pair, the head's guess of the target's h at position L-1."""
    B, c = len(tokens), max(pending)
    L = buf.lengths[:B]
    ids = torch.tensor([seq[len(seq) - p :] + [seq[-1]] * (c - p) for seq, p in zip(tokens, pending)],
                       device=head.device)  # [B, c]: x_{L-p} .. x_{L-1}, padded
    p_dev = torch.tensor(pending, device=head.device)
    starts = [n - 1 - p for n, p in zip(lengths, pending)]
    features = head.forward(ids, buf.draft_hidden_states[:B, :c], starts, L - 1 - p_dev, buf.verify_mask)
    return features[torch.arange(B, device=head.device), p_dev - 1]


def eagle_step(target: Decoder, head: HeadDrafter, buf: StepBuffers, tokens: list[list[int]], pending: list[int],
               lengths: list[int], sampler: Sampler, sync=lambda: None, ranks: bool = False) -> StepOutput:
    """Advance every row by its accepted drafts plus one token. `tokens[b]`: row b's committed tokens,
    `pending[b]`: its pairs still to feed (n + 1, the module docstring), `lengths` the committed counts
    (buf.lengths holds them on the device). `ranks`: also rank the depth-1 target token among the head's
    top RANKED first drafts (StepOutput.ranks), as profiling measures a tree's siblings."""
    B, k = len(tokens), buf.draft_tokens.shape[1]
    L = buf.lengths[:B]
    drafts, q, logits = buf.draft_tokens[:B], buf.draft_logits[:B, :k], buf.target_logits[:B]
    pairs = buf.draft_hidden_states[:B]  # [B, k+1, H]: the verify's hidden states, the next pending pairs
    t0 = time.perf_counter()

    # 1. catch-up: the pending pairs; the output at each row's last real pair drafts d_1
    feature = catch_up(head, buf, tokens, pending, lengths)  # [B, H]: the guess of h at position L-1

    # 2. draft d_1 .. d_k, one pair per forward after the first
    q_ids = torch.empty_like(drafts)  # [B, k]: the drafts as the head's ids (sampling reads q by them)
    for i in range(k):
        if i:
            feature = head.forward(drafts[:, i - 1 : i], feature.unsqueeze(1), [n + i - 2 for n in lengths],
                                   L + i - 2, buf.draft_mask)[:, -1]
        head.logits(feature, out=q[:, i])
        q_ids[:, i] = sampler.pick(q[:, i])
        drafts[:, i] = head.to_target(q_ids[:, i])
    sync()
    t1 = time.perf_counter()

    # 3. verify: the target over x[L-1], d_1 .. d_k; its hidden states are the next step's pending pairs
    last = torch.tensor([[seq[-1]] for seq in tokens], device=head.device)
    hidden = target.forward(torch.cat([last, drafts], 1), [n - 1 for n in lengths], buf.verify_mask, L - 1,
                            buf.tensors.get("verify_mask_sliding"))  # [B, k+1, H]
    pairs.copy_(hidden)
    target.logits(hidden, out=logits)
    sync()
    t2 = time.perf_counter()

    # 4. accept/reject and the bonus token, as the draft-model chain (q over the head's vocabulary)
    accepted, bonus = sampler.accept(drafts, q, logits, q_ids, head.d2t)
    out = advance(drafts, accepted, bonus, L, t0, t1, t2)
    if ranks:
        top = head.to_target(q[:, 0].topk(min(RANKED, q.shape[-1]), dim=-1).indices)  # [B, R] target ids
        out.ranks = depth1_ranks(top.tolist(), out.tokens[:, 0].tolist())
    return out

