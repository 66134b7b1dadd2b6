"""Packed grouped-query attention equals transformers' SDPA path (which copies K/V per head)."""

import types

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from engine.attention import NAME, packed_attention, packed_gqa_sdpa


def test_packed_gqa_equals_repeated_kv():
    torch.manual_seed(0)
    B, H, KV, n, S, D = 2, 6, 2, 3, 11, 8
    module = types.SimpleNamespace(num_key_value_groups=H // KV, is_causal=True, training=False)
    q, k, v = torch.randn(B, H, n, D), torch.randn(B, KV, S, D), torch.randn(B, KV, S, D)
    starts = torch.tensor([5, 8])  # rows at different lengths: query j of row b sees slots <= starts[b] + j
    mask = torch.arange(S) <= (starts[:, None] + torch.arange(n))[:, None, :, None]  # [B, 1, n, S]
    ours, _ = packed_gqa_sdpa(module, q, k, v, mask, scaling=D**-0.5)
    theirs, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=D**-0.5)
    assert ours.shape == theirs.shape == (B, n, H, D)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_packed_attention_switches_only_inside():
    config = types.SimpleNamespace(_attn_implementation="sdpa")
    with packed_attention(config):
        assert config._attn_implementation == NAME
    assert config._attn_implementation == "sdpa"
    eager = types.SimpleNamespace(_attn_implementation="eager")
    with packed_attention(eager):
        assert eager._attn_implementation == "eager"  # only SDPA models are switched
