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
    # verified as the plan runs: whole batches of its batch, at least the 8 prompts asked for
    run = plan.measured["run"]
    assert run["prompts"] % plan.knobs.batch_size == 0 and 8 <= run["prompts"] < 8 + plan.knobs.batch_size
    # the plan and plain decoding ran plan, plain, plain, plan, each side's two runs pooled (new tokens twice over)
    if plan.knobs.draft_length:
        assert run["order"] == "plan, plain, plain, plan"
        verified = json.loads(result.stdout)["measured"] if "measured" in json.loads(result.stdout) else plan.measured
        assert verified["speedup_over_plain"] == pytest.approx(
            verified["decode_tokens_per_s"] / verified["plain_decode_tokens_per_s"])
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


def test_tune_budget_floors_fail_before_profiling(tiny_pair, tmp_path, monkeypatch):
    """A budget below the weights, or below plain decoding at batch 1, is refused before any profiling,
    with the numbers tune itself would give after it."""
    from engine import workflow
    from specmemo_plan.memory import Knobs, breakdown
    from specmemo_plan.models import load_shape

    def no_profiling(*args, **kwargs):
        raise AssertionError("profiled before checking the budget")

    monkeypatch.setattr(workflow, "profile_pair", no_profiling)
    target, draft = tiny_pair
    shape = load_shape(target)
    weights = breakdown(shape, None, Knobs(batch_size=1, max_context=1, weight_dtype="fp32")).weights_bytes
    need = breakdown(shape, None, Knobs(batch_size=1, max_context=64, weight_dtype="fp32")).total_bytes
    args = ["tune", "-t", target, "-d", draft, "--context", "64", "-o", str(tmp_path / "p.json"), "--budget"]
    result = CliRunner().invoke(cli, args + ["1000"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: the budget 1000 B is below the weights alone")
    result = CliRunner().invoke(cli, args + [str(weights + 1)])
    assert result.exit_code == 1
    assert f"below the minimum: plain decoding at batch 1 needs" in result.output
    assert f"raise --budget to at least {need} bytes" in result.output
    assert not (tmp_path / "p.json").exists()


def write_synthetic(path, **kwargs):
    from dataclasses import asdict

    path.write_text(json.dumps(asdict(synthetic_measured(**kwargs))))
    return str(path)


def test_tune_measured_refuses_options_it_would_ignore(tmp_path):
    """-t, -d and --dtype beside --measured are filters the profile must pass; profiling-only options
    are refused (they were silently ignored, and tune planned for the profiled pair)."""
    measured = write_synthetic(tmp_path / "m.json")
    out = str(tmp_path / "p.json")
    base = ["tune", "--measured", measured, "--context", "512", "--max-new-tokens", "64", "--k-max", "4", "-o", out]
    cases = [
        (["-t", "llama-68m"], f"Error: -t llama-68m: the measured profile {measured} timed llama-2-7b-chat as the target"),
        (["-d", "llama-2-7b-chat"], f"Error: -d llama-2-7b-chat: the measured profile {measured} timed llama-68m as the draft"),
        (["--dtype", "bf16"], f"Error: --dtype bf16: the measured profile {measured} timed fp16"),
        (["--acceptance", "0.5", "--repeats", "2"], f"Error: --acceptance, --repeats: these shape a profile run; {measured} was measured already"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(cli, base + extra)
        assert result.exit_code == 1 and result.output.startswith(message), (extra, result.output)
        assert not (tmp_path / "p.json").exists()
    result = CliRunner().invoke(cli, base + ["-t", "llama-2-7b-chat", "-d", "llama-68m", "--dtype", "fp16"])
    assert result.exit_code == 0, result.output
    assert read_plan(out).target.ref == "llama-2-7b-chat"


def test_tune_never_writes_over_its_measured_profile(tmp_path):
    measured = write_synthetic(tmp_path / "m.json")
    before = (tmp_path / "m.json").read_bytes()
    result = CliRunner().invoke(cli, ["tune", "--measured", measured, "--context", "512", "-o", measured])
    assert result.exit_code == 1 and "is also an input" in result.output
    assert (tmp_path / "m.json").read_bytes() == before


def test_profile_output_is_checked_before_profiling(tiny_pair, tmp_path, monkeypatch):
    from engine import workflow

    monkeypatch.setattr(workflow, "profile_pair", lambda *a, **k: (_ for _ in ()).throw(AssertionError("profiled")))
    result = CliRunner().invoke(cli, ["profile", "-t", tiny_pair[0], "-o", str(tmp_path / "missing" / "dir" / "m.json")])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output


def test_verify_runs_whole_batches_of_the_plan():
    """`tune --verify` ran 8 calibration prompts on a batch-16 plan: it rounds up to whole batches, and
    cycles the calibration set past its size."""
    from engine.profiling import calibration_prompts
    from engine.workflow import verify_prompts

    calibration = [p["turns"][0] for p in calibration_prompts()]
    assert verify_prompts(8, 16) == calibration[:16]
    assert verify_prompts(8, 4) == calibration[:8]
    rows = verify_prompts(100, 64)
    assert len(rows) == 128 and rows[:96] == calibration and rows[96:] == calibration[:32]


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


def test_verify_runs_plan_plain_plain_plan_and_pools_each_side(tiny_pair):
    """A shared machine drifts by tens of percent over seconds: verify runs the plan, plain decoding twice,
    the plan again, and pools each side (counts and seconds summed), so the measured speedup is their ratio."""
    from conftest import make_test_plan
    from engine.workflow import run_prompts, verify, verify_prompts

    target, draft = tiny_pair
    plan = make_test_plan(target, draft, max_context=64, max_new_tokens=8, draft_length=2)
    report = verify(plan, num_prompts=2, max_new_tokens=8, worst_case=False)
    once = verify(plan, num_prompts=2, max_new_tokens=8, worst_case=False, abba=False)
    assert report.order == "plan, plain, plain, plan" and once.order == "plan, plain"
    # greedy: both passes generate the same tokens, so each side's pooled counts are twice one pass's
    assert report.engine.stats.new_tokens == 2 * once.engine.stats.new_tokens
    assert report.plain.stats.new_tokens == 2 * once.plain.stats.new_tokens
    assert report.engine.stats.accepted_histogram == [2 * n for n in once.engine.stats.accepted_histogram]
    assert report.measured_speedup == pytest.approx(report.engine.stats.decode_tokens_per_s
                                                    / report.plain.stats.decode_tokens_per_s)
    assert report.engine.static_bytes("measured") == report.engine.static_bytes("predicted")  # the first pass's
    single = run_prompts(plan, None, None, "cpu", verify_prompts(2, 1), 8)
    assert single.raw is not None and len(single.contexts) == 2
