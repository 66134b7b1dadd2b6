"""The autotuner end to end on a tiny random pair: profile, tune, verify, through the CLI."""

import json

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
