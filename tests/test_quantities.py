"""One definition per quantity: the planner and the engine report the same acceptance, tokens per
step and error sign on the same numbers (specmemo_plan.quantities)."""

import pytest

from specmemo_plan.quantities import acceptance_rate, error_percent, tokens_per_step
from specmemo_plan.throughput import tokens_per_step_distribution

A, K = 0.5, 4
# i.i.d. acceptance 0.5 at k = 4 as row-step counts: P(i accepted) = a^i (1 - a), P(4) = a^4, times 16
COUNTS = [8, 4, 2, 1, 1]


def test_iid_histogram_gives_the_rate_and_the_expected_tokens():
    histogram = tokens_per_step_distribution(K, A)
    assert histogram == pytest.approx([c / 16 for c in COUNTS])
    assert acceptance_rate(histogram) == pytest.approx(A)
    assert tokens_per_step(histogram) == pytest.approx((1 - A ** (K + 1)) / (1 - A))
    # counts or shares: the same numbers
    assert acceptance_rate(COUNTS) == pytest.approx(A) and tokens_per_step(COUNTS) == pytest.approx(1.9375)


def test_engine_stats_report_what_the_planner_predicts():
    """The bug this guards: the engine said accepted / (k * row-steps) = 0.234 where the planner said 0.5."""
    from specmemo_plan.models import load_shape
    from specmemo_plan.memory import Knobs
    from specmemo_plan.throughput import BandwidthLatency, predict_speed

    from engine.results import Stats

    stats = Stats(K, steps=16, accepted_histogram=list(COUNTS), rows=1, row_slots=16).as_dict()
    speed = predict_speed(load_shape("llama-2-7b-chat"), load_shape("llama-68m"),
                          Knobs(batch_size=1, max_context=1024, draft_length=K, weight_dtype="fp16"),
                          BandwidthLatency(1000.0), histogram=COUNTS)
    assert stats["acceptance_rate"] == pytest.approx(speed.acceptance_rate) == pytest.approx(A)
    assert stats["tokens_per_step"] == pytest.approx(speed.expected_tokens_per_step) == pytest.approx(1.9375)


def test_engine_stats_edge_cases():
    from engine.results import Stats

    assert Stats(0, accepted_histogram=[5]).as_dict()["tokens_per_step"] == 1.0  # plain decoding
    assert Stats(0, accepted_histogram=[5]).as_dict()["acceptance_rate"] is None
    assert Stats(3).as_dict()["acceptance_rate"] is None and Stats(3).as_dict()["tokens_per_step"] is None
    assert Stats(3, accepted_histogram=[0, 0, 0, 7]).as_dict()["acceptance_rate"] == 1.0


def test_error_percent_is_measured_relative_to_predicted():
    assert error_percent(110, 100) == pytest.approx(10.0)  # measured more than predicted: the plan was low
    assert error_percent(90, 100) == pytest.approx(-10.0)
    assert error_percent(None, 100) is None and error_percent(5, None) is None and error_percent(5, 0) is None


def test_engine_memory_errors_use_the_same_sign():
    from engine.memory_probe import _component_error

    assert _component_error(120, 100) == pytest.approx(20.0)
    assert _component_error(0, 0) == 0.0 and _component_error(3, 0) is None and _component_error(None, 100) is None
