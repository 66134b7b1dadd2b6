"""Mixture of experts: the weights hold every expert, a forward reads only the experts it routes to."""

import pytest

from specmemo_plan.memory import Knobs, weight_bytes
from specmemo_plan.models import load_shape
from specmemo_plan.throughput import (
    BandwidthLatency, expected_distinct_experts, expert_bytes, forward_bytes, forward_flops, predict_speed,
    weights_read_bytes,
)

MIXTRAL = load_shape("mixtral-8x7b-instruct-v0.1")


def test_expected_distinct_experts_under_uniform_routing():
    assert expected_distinct_experts(8, 2, 1) == 2.0  # one token: exactly its top-k
    assert expected_distinct_experts(8, 2, 5) == 8 * (1 - 0.75**5) == 6.1015625
    assert expected_distinct_experts(8, 2, 0) == 0.0
    assert expected_distinct_experts(128, 8, 10_000) == pytest.approx(128)  # every expert, eventually
    # fewer than B * n * top_k once tokens share experts
    assert expected_distinct_experts(128, 8, 5) < 5 * 8


def test_mixtral_weights_hold_every_expert():
    assert MIXTRAL.num_params == 46_702_792_704
    e = MIXTRAL.experts
    assert (e.num_experts, e.top_k, e.moe_layers) == (8, 2, 32)
    assert e.expert_params == 3 * 14336 * 4096  # gate, up, down; no biases
    assert expert_bytes(MIXTRAL, "fp16") == 32 * 8 * e.expert_params * 2
    assert weight_bytes(MIXTRAL, "fp16") == MIXTRAL.num_params * 2


def test_verify_reads_more_experts_than_decode():
    """B = 1: decoding one token reads 2 of 8 experts per layer, verifying 5 (k = 4) reads 6.1 of them."""
    dense = weight_bytes(MIXTRAL, "fp16") - expert_bytes(MIXTRAL, "fp16")
    per_expert = MIXTRAL.experts.expert_params * 2
    assert weights_read_bytes(MIXTRAL, "fp16", 1) == dense + 32 * 2 * per_expert
    assert weights_read_bytes(MIXTRAL, "fp16", 5) == dense + round(32 * 6.1015625 * per_expert)
    decode, verify = forward_bytes(MIXTRAL, "fp16", 1, 1, 1000), forward_bytes(MIXTRAL, "fp16", 1, 5, 1000)
    assert verify > 2.5 * decode  # a dense model's verify costs about what its decode does
    dense_model = load_shape("llama-2-7b-chat")
    assert forward_bytes(dense_model, "fp16", 1, 5, 1000) < 1.01 * forward_bytes(dense_model, "fp16", 1, 1, 1000)


def test_flops_count_top_k_experts_per_token():
    """One token at context 0: 2 FLOPs per weight of q/k/v/o (32 layers of 2*4096^2 + 2*1024*4096) and of its
    2 routed experts, 4 * q_dim per layer for scores and values over its own position, and the output layer."""
    attention_weights = 32 * (2 * 4096 * 4096 + 2 * 1024 * 4096)
    routed = 32 * 2 * MIXTRAL.experts.expert_params
    scores = 4 * 32 * (32 * 128) * 1
    assert forward_flops(MIXTRAL, 1, 1, 0) == 2 * attention_weights + 2 * routed + scores + 2 * 32000 * 4096
    # B x n tokens: every token runs top_k experts, however many distinct experts they share
    assert forward_flops(MIXTRAL, 2, 5, 0) - forward_flops(MIXTRAL, 1, 1, 0) > 9 * 2 * routed


def test_speculation_gains_less_on_moe():
    """Same acceptance, same bandwidth: the MoE target's verify pass costs more relative to its decode."""
    latency = BandwidthLatency(1000.0)
    knobs = Knobs(batch_size=1, max_context=2048, draft_length=4)
    moe = predict_speed(MIXTRAL, load_shape("llama-68m"), knobs, latency)
    dense = predict_speed(load_shape("llama-2-70b-chat"), load_shape("llama-68m"), knobs, latency)
    assert moe.speedup < dense.speedup


def test_quantised_experts_are_quantised_too():
    fp16, int4 = expert_bytes(MIXTRAL, "fp16"), expert_bytes(MIXTRAL, "int4")
    assert int4 < fp16 / 3
    assert weights_read_bytes(MIXTRAL, "int4", 1) < weights_read_bytes(MIXTRAL, "fp16", 1) / 3
