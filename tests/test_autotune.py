import random
from dataclasses import asdict, replace

import pytest

from specmemo_plan.autotune import (
    FittedLatency, LatencyFit, LatencySample, fit_latency, pareto_frontier, search,
)
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.memory import Knobs, breakdown
from specmemo_plan.models import load_shape
from specmemo_plan.throughput import predict_speed

TARGET = load_shape("llama-2-7b-chat")
DRAFT = load_shape("llama-68m")


def synthetic(coefficients, noise=0.0, seed=0):
    rng = random.Random(seed)
    samples = []
    for batch in (1, 2, 4, 8):
        for n in (1, 2, 4, 8, 64):
            for context in (0, 128, 1024):
                ms = coefficients[0] + coefficients[1] * batch * n + coefficients[2] * batch * context
                ms += coefficients[3] * batch * n * context
                samples.append(LatencySample("target", batch, n, context, ms * (1 + rng.uniform(-noise, noise))))
    return samples


def test_fit_recovers_known_coefficients():
    truth = (12.0, 0.35, 0.002, 0.0001)
    fit = fit_latency(synthetic(truth), piecewise=False)
    assert fit.coefficients == pytest.approx(truth, rel=1e-6)
    assert fit.mean_abs_pct_error < 1e-6
    # the piecewise form contains the linear one: the same curve, slope 0.35 on every segment
    piecewise = fit_latency(synthetic(truth))
    assert piecewise.knots == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    assert piecewise.mean_abs_pct_error < 1e-6
    assert piecewise.ms(3, 5, 100) == pytest.approx(fit.ms(3, 5, 100), rel=1e-6)


def test_piecewise_fit_follows_a_kernel_step():
    """Rows cost 2 ms each up to 4 rows, then 0.1 ms each (a kernel that pads to 4 rows): the
    piecewise g recovers it, a line cannot."""
    def g(rows):
        return 2.0 * (min(rows, 4) - 1) + 0.1 * max(rows - 4, 0)

    samples = [LatencySample("target", b, n, s, 10.0 + g(b * n) + 0.001 * b * s)
               for b in (1, 2, 4) for n in (1, 2, 3, 4, 6) for s in (64, 512)]
    fit = fit_latency(samples)
    assert fit.mean_abs_pct_error < 1e-6
    assert all(c >= 0 for c in fit.coefficients)
    assert fit.g_ms(3) == pytest.approx(g(3), abs=1e-6) and fit.g_ms(24) == pytest.approx(g(24), abs=1e-6)
    assert fit.ms(3, 3, 100) == pytest.approx(10.0 + g(9) + 0.3, rel=1e-6)  # B*n = 9 was not measured
    linear = fit_latency(samples, piecewise=False)
    assert linear.mean_abs_pct_error > 5
    # profiles written before knots existed read back as the linear form
    old = {k: v for k, v in asdict(linear).items() if k != "knots"}
    assert LatencyFit.from_dict(old) == linear and LatencyFit.from_dict(asdict(fit)) == fit


def test_fit_with_noise_reports_its_error():
    fit = fit_latency(synthetic((12.0, 0.35, 0.002, 0.0), noise=0.05, seed=3))
    assert all(c >= 0 for c in fit.coefficients)
    assert 0 < fit.mean_abs_pct_error < 5 and fit.max_abs_pct_error < 12


def test_too_few_samples():
    with pytest.raises(SpecMemoError, match="cannot fit"):
        fit_latency(synthetic((1, 1, 0, 0))[:2])


def fitted(target_coef, draft_coef):
    make = lambda c: LatencyFit(tuple(c), 0.0, 0.0, 10)  # noqa: E731
    return FittedLatency(make(target_coef), make(draft_coef), TARGET.fingerprint, DRAFT.fingerprint)


def brute_force(latency, budget, base, acceptance, k_max, max_batch, chunks):
    best = None
    for k in range(0, k_max + 1):
        for batch in range(1, max_batch + 1):
            for chunk in chunks:
                d = DRAFT if k else None
                knobs = replace(base, draft_length=k, batch_size=batch, prefill_chunk=chunk)
                if breakdown(TARGET, d, knobs).total_bytes > budget:
                    continue
                speed = predict_speed(TARGET, d, knobs, latency, acceptance=acceptance).tokens_per_s
                if best is None or speed > best[0] + 1e-9:
                    best = (speed, k, batch)
    return best


@pytest.mark.parametrize("budget_gib", [14.5, 16, 20])
def test_search_finds_the_known_optimum(budget_gib):
    # target: 20 ms floor + per-token work; the draft is 20x cheaper
    latency = fitted((20.0, 0.8, 0.0005, 0.0), (1.0, 0.04, 0.0001, 0.0))
    base = Knobs(batch_size=1, max_context=2048, draft_length=1)
    budget = int(budget_gib * 2**30)
    result = search(TARGET, DRAFT, base, budget, latency, acceptance=0.75, k_max=8, max_batch=16, chunks=(256, 512))
    speed, k, batch = brute_force(latency, budget, base, 0.75, 8, 16, (256, 512))
    assert result.fastest.tokens_per_s == pytest.approx(speed)
    assert (result.fastest.knobs.draft_length, result.fastest.knobs.batch_size) == (k, batch)
    assert result.fastest.total_bytes <= budget
    assert k >= 1  # a cheap draft pays


def test_retain_trades_throughput_for_memory():
    latency = fitted((20.0, 0.8, 0.0005, 0.0), (1.0, 0.04, 0.0001, 0.0))
    base = Knobs(batch_size=1, max_context=2048, draft_length=1)
    result = search(TARGET, DRAFT, base, 20 * 2**30, latency, acceptance=0.75, max_batch=16, retain=0.9)
    assert result.chosen.tokens_per_s >= 0.9 * result.fastest.tokens_per_s
    assert result.chosen.total_bytes <= result.fastest.total_bytes
    frontier = result.frontier
    assert all(a.total_bytes <= b.total_bytes and a.tokens_per_s < b.tokens_per_s for a, b in zip(frontier, frontier[1:]))
    assert pareto_frontier(frontier) == frontier


def test_slow_draft_plans_plain_decoding():
    latency = fitted((20.0, 0.8, 0.0005, 0.0), (25.0, 0.8, 0.0005, 0.0))  # draft slower than the target
    base = Knobs(batch_size=1, max_context=2048, draft_length=1)
    result = search(TARGET, DRAFT, base, 20 * 2**30, latency, acceptance=0.75, max_batch=8)
    assert result.fastest.knobs.draft_length == 0
    assert result.fastest is result.plain or result.fastest.tokens_per_s == result.plain.tokens_per_s
    # what was weighed against it: the best configuration with a draft, slower
    assert result.best_draft.knobs.draft_length >= 1 and result.best_draft.tokens_per_s < result.fastest.tokens_per_s


def test_nothing_fits():
    latency = fitted((20.0, 0.8, 0.0, 0.0), (1.0, 0.04, 0.0, 0.0))
    with pytest.raises(SpecMemoError, match="nothing fits"):
        search(TARGET, DRAFT, Knobs(batch_size=1, max_context=2048, draft_length=1), 10 * 2**30, latency, acceptance=0.7)


# ----------------------------------------------------------------------------- static batches: rows wait for the slowest


def test_expected_max_of_normals_known_values():
    from specmemo_plan.throughput import expected_max_of_normals

    assert expected_max_of_normals(1) == 0.0
    assert expected_max_of_normals(2) == pytest.approx(1 / 3.141592653589793**0.5, rel=1e-6)
    assert expected_max_of_normals(4) == pytest.approx(1.0293754, rel=1e-6)


def test_batch_utilisation_matches_a_simulation():
    from specmemo_plan.throughput import batch_utilisation, tokens_per_step_distribution

    histogram = [0.6, 0.25, 0.1, 0.05]
    for k, batch, new_tokens in ((1, 4, 48), (2, 4, 48), (3, 8, 128)):
        dist = tokens_per_step_distribution(k, histogram=histogram)
        rng = random.Random(k)
        live = total = 0
        for _ in range(3000):
            steps = []
            for _ in range(batch):
                made = n = 0
                while made < new_tokens:
                    made += rng.choices(range(1, k + 2), weights=dist)[0]
                    n += 1
                steps.append(n)
            live += sum(steps)
            total += batch * max(steps)
        assert batch_utilisation(dist, batch, new_tokens) == pytest.approx(live / total, abs=0.015)
    dist = tokens_per_step_distribution(2, acceptance=0.5)
    assert batch_utilisation(dist, 1, 48) == 1.0
    assert 1.0 > batch_utilisation(dist, 2, 48) > batch_utilisation(dist, 8, 48)


def test_prediction_counts_idle_rows_only_when_told():
    knobs = Knobs(batch_size=4, max_context=1024, draft_length=2)
    latency = fitted((20.0, 0.1, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0))
    free = predict_speed(TARGET, DRAFT, knobs, latency, acceptance=0.6)
    static = predict_speed(TARGET, DRAFT, knobs, latency, acceptance=0.6, new_tokens=64)
    assert static.tokens_per_s < free.tokens_per_s and static.plain_tokens_per_s == free.plain_tokens_per_s
