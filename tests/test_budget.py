from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specmemo_plan.budget import (
    check_weights_fit, largest, min_budget,
)
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.memory import Knobs, breakdown
from specmemo_plan.models import load_shape
from specmemo_plan.placement import fits as fits_devices
from specmemo_plan.quantities import acceptance_rate
from specmemo_plan.throughput import (
    BandwidthLatency, RooflineLatency, expected_tokens_from_histogram,
    expected_tokens_per_step, predict_speed,
)

TARGET = load_shape("llama-2-7b-chat")
DRAFT = load_shape("llama-68m")
LATENCY = BandwidthLatency(672.0)


def test_expected_tokens():
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1.75)
    assert expected_tokens_per_step(1.0, 4) == 5
    assert expected_tokens_per_step(0.0, 4) == 1
    assert expected_tokens_from_histogram([0.5, 0.5], 1) == pytest.approx(1.5)
    # a histogram measured at k_max = 3, used at k = 1: steps that accepted >= 1 accept 1
    assert expected_tokens_from_histogram([0.2, 0.3, 0.5, 0.0], 1) == pytest.approx(1.8)


@pytest.mark.parametrize("a", [0.3, 0.6, 0.9])
def test_acceptance_recovered_from_geometric_histogram(a):
    k = 6
    hist = [(a ** i) * (1 - a) for i in range(k)] + [a ** k]
    assert acceptance_rate(hist) == pytest.approx(a)
    assert expected_tokens_from_histogram(hist, k) == pytest.approx(expected_tokens_per_step(a, k))


def test_speed_prediction_plain_and_sd():
    knobs = Knobs(batch_size=1, max_context=2048, draft_length=4)
    speed = predict_speed(TARGET, DRAFT, knobs, LATENCY, acceptance=0.8)
    assert speed.speedup > 1.5
    plain = predict_speed(TARGET, None, replace(knobs, draft_length=0), LATENCY)
    assert plain.speedup == 1.0 and plain.tokens_per_s == pytest.approx(speed.plain_tokens_per_s)


def test_roofline_compute_bound_for_long_prefill():
    roof = RooflineLatency(bandwidth_gbps=1000, peak_tflops=100, bandwidth_efficiency=1, compute_efficiency=1)
    one = roof.forward_ms(TARGET, "fp16", 1, 1, 100)
    many = roof.forward_ms(TARGET, "fp16", 1, 4096, 0)
    assert one == pytest.approx(BandwidthLatency(1000).forward_ms(TARGET, "fp16", 1, 1, 100))
    assert many > 10 * one  # 4096 tokens cross the ridge point


def feasible(budget, knobs, acceptance, retain=None):
    """Some k >= 1 fits the budget and predicts a speedup (brute force, the definition)."""
    options = []
    for k in range(1, 17):
        kk = replace(knobs, draft_length=k)
        options.append((breakdown(TARGET, DRAFT, kk).total_bytes, predict_speed(TARGET, DRAFT, kk, LATENCY, acceptance=acceptance)))
    best = max(s.tokens_per_s for _, s in options)
    return any(total <= budget and s.speedup > 1 and (retain is None or s.tokens_per_s >= retain * best) for total, s in options)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.3, 0.95), st.integers(1, 16), st.integers(16, 8192), st.one_of(st.none(), st.floats(0.5, 1.0)))
def test_min_budget_is_feasible_and_one_byte_less_is_not(acceptance, batch, context, retain):
    knobs = Knobs(batch_size=batch, max_context=context, draft_length=1)
    result = min_budget(TARGET, DRAFT, knobs, LATENCY, retain=retain, acceptance=acceptance)
    assert feasible(result.total_bytes, knobs, acceptance, retain)
    assert not feasible(result.total_bytes - 1, knobs, acceptance, retain)
    assert result.speed.speedup > 1


def test_min_budget_when_sd_does_not_pay():
    slow_draft = load_shape("llama-2-13b-chat")  # a "draft" bigger than the target
    with pytest.raises(SpecMemoError, match="does not pay"):
        min_budget(TARGET, slow_draft, Knobs(batch_size=1, max_context=1024, draft_length=1), LATENCY, acceptance=0.9)


def fits(target, draft, knobs, budget):
    return fits_devices(target, draft, knobs, [budget])


def test_inverse_queries_are_tight():
    knobs = Knobs(batch_size=4, max_context=4096, draft_length=4)
    budget = 24 * 2**30
    b = largest("batch_size", TARGET, DRAFT, knobs, budget)
    assert fits(TARGET, DRAFT, replace(knobs, batch_size=b), budget)
    assert not fits(TARGET, DRAFT, replace(knobs, batch_size=b + 1), budget)
    c = largest("max_context", TARGET, DRAFT, knobs, budget)
    assert c == TARGET.max_position_embeddings == 4096  # fits up to the target's limit
    assert largest("max_context", TARGET, DRAFT, replace(knobs, batch_size=64), budget) < 2048
    c = largest("max_context", TARGET, DRAFT, replace(knobs, batch_size=64), budget)
    assert not fits(TARGET, DRAFT, replace(knobs, batch_size=64, max_context=c + 1), budget)
    k = largest("draft_length", TARGET, DRAFT, knobs, budget)
    assert fits(TARGET, DRAFT, replace(knobs, draft_length=k), budget)
    assert largest("batch_size", TARGET, DRAFT, knobs, 10 * 2**30) is None  # weights alone exceed 10 GiB


def test_budget_below_weights_says_by_how_much():
    with pytest.raises(SpecMemoError, match=r"below the weights alone .* by "):
        check_weights_fit(TARGET, DRAFT, Knobs(batch_size=1, max_context=10, draft_length=1), 10 * 2**30)
