"""Attention over the static cache without copying K/V for every query head (grouped-query attention).

Given a mask and more than one query token, transformers' SDPA path expands K and V of every layer
to all query heads (`repeat_kv`): a copy of the whole cache slice it reads, per layer, per forward.
For SmolLM2 (9 query heads over 3 KV heads) that copy was 39% of a batch-4, 3-token verify over
512 cached tokens on our 2-core CPU (torch.profiler: aten::copy_ 238 of 614 ms). For one query,
transformers folds the query heads of a group into the query axis instead (`pack_gqa`); this does
the same for n queries:

    q [B, H, n, D] -> [B, KV, rep*n, D]    head h = g*rep + r becomes group g, rows r*n .. r*n+n-1
    mask [B, 1, n, S] -> [B, 1, rep*n, S]  row i repeated for each of the rep heads
    SDPA on the KV heads as they are; out [B, KV, rep*n, D] -> [B, n, H, D]

The engine switches a model to it only for the duration of its own forward (`packed_attention`),
so the same model object used elsewhere (transformers' generate in the benchmark) is unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "specmemo_packed_gqa"


def packed_gqa_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function signature; returns (attn_output [B, n, H, D], None)."""
    rep = getattr(module, "num_key_value_groups", 1)
    B, H, n, D = query.shape
    plain = (
        rep == 1 or n == 1 or attention_mask is None or attention_mask.dim() != 4 or attention_mask.shape[1] != 1
        or key.shape[1] * rep != H or key.shape[-1] != value.shape[-1]  # MLA: a value head narrower than the key's
        or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
        or kwargs.get("s_aux") is not None  # GPT-OSS attention sinks: transformers' own path
    )
    if plain:  # nothing to save (or a case we leave to transformers): its own SDPA path
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    S = attention_mask.shape[-1]
    q = query.reshape(B, H // rep, rep * n, D)
    mask = attention_mask[:, :, None].expand(B, 1, rep, n, S).reshape(B, 1, rep * n, S)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.reshape(B, H, n, D).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_gqa_sdpa)


@contextmanager
def packed_attention(config):
    """Run the model's attention through packed_gqa_sdpa while inside, where it uses SDPA."""
    previous = config._attn_implementation
    if previous != "sdpa":
        yield
        return
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = previous

