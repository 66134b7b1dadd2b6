"""The autotuner end to end on a tiny random pair (profile, tune, verify, through the CLI), and
tune's notes on synthetic measured profiles: they describe the plan that was written."""

import json

import pytest
from click.testing import CliRunner

from specmemo_plan.autotune import read_measured_profile
from specmemo_plan.cli import cli
from specmemo_plan.plan import read_plan


def test_profile_tune_verify(tiny_pair, tmp_path):
    target, draft = tiny_pair
    runner = CliRunner()
    measured_path = tmp_path / "measured.json"
    result = runner.invoke(cli, ["profile", "-t", target, "-d", draft, "--context", "128", "--prompts", "4",
                                 "--k-max", "4", "--repeats", "2", "--max-batch", "4", "-o", str(measured_path)])
    assert result.exit_code == 0, result.output
    measured = read_measured_profile(measured_path)
    assert measured.notes["grid"]["batches"] == [1, 2, 4]
    assert measured.acceptance_source == "measured" and len(measured.acceptance_histogram) == 5
    assert sum(measured.acceptance_histogram) > 0
    assert measured.target_fit["num_samples"] >= 4 and all(c >= 0 for c in measured.target_fit["coefficients"])

    plan_path = tmp_path / "plan.json"
    result = runner.invoke(cli, ["tune", "--measured", str(measured_path), "--budget", "64MiB", "--context", "128",
                                 "--max-new-tokens", "16", "--max-batch", "4", "--k-max", "4", "--verify",
                                 "-o", str(plan_path), "--json"])
    assert result.exit_code == 0, result.output
    plan = read_plan(plan_path)
    assert plan.prediction.memory["total_bytes"] <= plan.budget_bytes == 64 * 2**20
    assert plan.provenance["search"]["evaluated"] > 0
    assert plan.measured is not None and plan.measured["decode_tokens_per_s"] > 0
    # the static parts the engine allocated are the plan's prediction to the byte
    assert plan.measured["memory_error_percent"]["static_total"] == 0
    # the activation bound is exercised once with the whole context filled
    worst = plan.measured["worst_case_activations"]
    assert worst["prompt_tokens"] == 127 and worst["batch"] == plan.knobs.batch_size
    assert worst["predicted_activation_bytes"] == plan.prediction.memory["components"]["activations"]
    assert json.loads(result.stdout)["knobs"] == plan.to_dict()["knobs"]
    # errors are measured relative to predicted (quantities.error_percent): + when the prediction was too low
    m = plan.measured
    predicted = m["predicted_at_run_context"]["tokens_per_s"]
    assert m["throughput_error_percent"] == pytest.approx((m["decode_tokens_per_s"] - predicted) / predicted * 100)
    if worst["measured_activation_bytes"] is not None:
        assert worst["error_percent"] == pytest.approx(
            (worst["measured_activation_bytes"] - worst["predicted_activation_bytes"]) / worst["predicted_activation_bytes"] * 100)

    # compare reuses the same measured profile: this device's row from its curves and histogram
    result = runner.invoke(cli, ["compare", "--measured", str(measured_path), "-c", "128", "-b", "4", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["devices"]
    assert row["profile"] == "measured:measured" and row["plain_fits"] and row["plain_tokens_per_s"] > 0


def test_tune_budget_below_minimum_says_the_minimum(tiny_pair, tmp_path):
    target, draft = tiny_pair
    result = CliRunner().invoke(cli, ["tune", "-t", target, "-d", draft, "--acceptance", "0.6", "--repeats", "1",
                                      "--budget", "1000", "--context", "64", "-o", str(tmp_path / "p.json")])
    assert result.exit_code != 0
    assert "below the minimum" in result.output and "plain decoding at batch 1 needs" in result.output
    assert not (tmp_path / "p.json").exists()


def test_slow_draft_plans_plain_decoding(tiny_pair, tmp_path):
    target, _ = tiny_pair
    # the target as its own draft: the same cost per token, so drafting can never pay
    result = CliRunner().invoke(cli, ["tune", "-t", target, "-d", target, "--acceptance", "0.3", "--repeats", "1",
                                      "--context", "64", "--max-batch", "2", "--k-max", "3", "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    plan = read_plan(tmp_path / "p.json")
    assert plan.draft is None and plan.knobs.draft_length == 0
    assert "planning plain decoding" in result.output


def test_verify_cost_ratios_on_a_tiny_model(tiny_pair):
    from engine.loading import load_model
    from engine.profiling import verify_cost_ratios

    ratios = verify_cost_ratios(load_model(tiny_pair[0], "fp32"), "fp32", max_tokens=4, context=16, repeats=2, rounds=2)
    assert list(ratios) == [1, 2, 3, 4] and ratios[1] == 1.0 and all(r > 0 for r in ratios.values())


# ----------------------------------------------------------------------------- notes against the plan


def synthetic_measured(acceptance: float = 0.6, k_max: int = 4, batches=(1, 2, 4), contexts=(64, 512)):
    """A measured profile of llama-2-7b-chat + llama-68m where SD loses at batch 1 and wins at batch 4.

    Target: t(B, n) = 10 ms + 20 ms once a forward has more than one row (B*n > 1), as a CPU whose
    kernels step after one row: verifying k+1 tokens at batch 1 costs 3 decode steps, at batch 4 one.
    Draft: 1 ms a forward. Context terms 0."""
    from specmemo_plan.autotune import MeasuredProfile
    from specmemo_plan.models import load_shape
    from specmemo_plan.throughput import tokens_per_step_distribution

    target, draft = load_shape("llama-2-7b-chat"), load_shape("llama-68m")
    fit = {"mean_abs_pct_error": 0.0, "max_abs_pct_error": 0.0, "num_samples": 24}
    samples = [{"model": m, "batch": b, "num_tokens": n, "context": c, "ms": 1.0}
               for m in ("target", "draft") for b in batches for n in (1, 2) for c in contexts]
    return MeasuredProfile(
        device={"kind": "cpu", "name": "synthetic", "total_memory_bytes": 2**40, "profile": None},
        target={"ref": "llama-2-7b-chat", "dtype": "fp16", "fingerprint": target.fingerprint},
        draft={"ref": "llama-68m", "dtype": "fp16", "fingerprint": draft.fingerprint},
        samples=samples, target_fit=dict(fit, coefficients=[10.0, 20.0, 0.0, 0.0, 0.0, 0.0], knots=[1, 2, 4, 8]),
        draft_fit=dict(fit, coefficients=[1.0, 0.0, 0.0, 0.0], knots=[]),
        acceptance_histogram=tokens_per_step_distribution(k_max, acceptance), acceptance_source="given",
    )


def check_notes_describe(plan, notes):
    """No note judges another plan: plain decoding is announced only for a plain plan, and SD's
    minimum is stated at the plan's batch."""
    for note in notes:
        if "planning plain decoding" in note:
            assert plan.draft is None and plan.knobs.draft_length == 0, note
        if "minimum" in note or "does not pay" in note:
            assert f"batch {plan.knobs.batch_size}" in note, note


def test_sd_that_loses_at_batch_1_and_wins_at_4_is_planned_without_contradiction():
    from specmemo_plan.tune import tune

    plan, report = tune(synthetic_measured(), 64 * 2**30, context=1024, max_new_tokens=128, k_max=4)
    assert plan.knobs.draft_length >= 1 and plan.knobs.batch_size == 4 and plan.draft is not None
    assert plan.prediction.speedup > 1
    assert not any("planning plain decoding" in n or "does not pay" in n for n in report.notes), report.notes
    check_notes_describe(plan, report.notes)
    assert report.min_budget_batch == 4 and report.min_budget_bytes <= plan.prediction.memory["total_bytes"]
    assert plan.provenance["min_budget_batch"] == 4 and plan.provenance["notes"] == report.notes


def test_a_budget_that_allows_only_batch_1_plans_plain_decoding_and_says_why():
    from specmemo_plan.memory import Knobs, breakdown
    from specmemo_plan.models import load_shape
    from specmemo_plan.tune import tune

    sd_at_1 = Knobs(batch_size=1, max_context=512, draft_length=4, weight_dtype="fp16")
    budget = breakdown(load_shape("llama-2-7b-chat"), load_shape("llama-68m"), sd_at_1).total_bytes + 1
    plan, report = tune(synthetic_measured(), budget, context=512, max_new_tokens=128, k_max=4, max_batch=4)
    assert plan.draft is None and plan.knobs.batch_size == 1
    assert any("does not pay" in n and "batch 1" in n and "planning plain decoding" in n for n in report.notes), report.notes
    check_notes_describe(plan, report.notes)


def test_search_stays_inside_the_measured_range():
    from specmemo_plan.tune import tune

    plan, report = tune(synthetic_measured(), 64 * 2**30, context=2048, max_new_tokens=128, k_max=4, max_batch=16)
    assert report.max_batch == 4 and plan.knobs.batch_size <= 4
    assert max(c.knobs.batch_size for c in report.result.frontier) <= 4
    assert any("batch 4, the largest the profile measured" in n and "16" in n for n in report.notes), report.notes
    assert any("past the longest profiled one (512" in n and "linear" in n for n in report.notes), report.notes
    # inside the measured range: no such notes
    _, inside = tune(synthetic_measured(), 64 * 2**30, context=512, max_new_tokens=128, k_max=4, max_batch=4)
    assert not any("measured" in n or "profiled" in n for n in inside.notes), inside.notes


def test_a_plan_at_the_k_limit_says_so():
    """With near-certain acceptance the best k is the longest measured one; the notes say it is the limit."""
    from specmemo_plan.tune import tune

    plan, report = tune(synthetic_measured(acceptance=0.99, k_max=2), 2**40, 1024, max_batch=4)
    assert plan.knobs.draft_length == 2
    assert any("largest draft length searched" in n and "stop at 2" in n for n in report.notes), report.notes
    plan, report = tune(synthetic_measured(acceptance=0.99, k_max=4), 2**40, 1024, max_batch=4, k_max=8)
    assert plan.knobs.draft_length == 4 and any("stop at 4" in n for n in report.notes)


def test_random_weight_config_reads_the_file_the_shape_came_from(tmp_path):
    """A multi-device plan of a bare config.json loads its config, not a preset of that name (a bug)."""
    from specmemo_plan.errors import SpecMemoError
    from specmemo_plan.models import load_preset_config, load_shape, random_weight_config

    cfg = {k: v for k, v in load_preset_config("llama-68m").items() if not k.startswith("_")}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert random_weight_config(load_shape(str(path))) == cfg
    assert random_weight_config(load_shape("llama-68m")) == cfg
    with pytest.raises(SpecMemoError, match="real weights"):
        random_weight_config(load_shape("bundled:smollm2-135m-draft"))
