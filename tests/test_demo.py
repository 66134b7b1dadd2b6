"""`specmemo-plan demo` end to end on the tiny random pair: profile, tune, write the plan, verify.

The main command must not contradict itself: every note it prints describes the plan it wrote.
Small prompt counts and a short context keep it to seconds.
"""

import re

import pytest
from click.testing import CliRunner

from specmemo_plan.cli import cli
from specmemo_plan.plan import read_plan

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_writes_a_plan_its_notes_describe(tiny_pair, tmp_path):
    from test_engine_eagle import save_head

    target, draft = tiny_pair
    head = save_head(tmp_path / "head", target, copy_token=False)
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(cli, ["demo", "-t", target, "-d", draft, "--head", head, "--budget", "64MiB", "-c",
                                      "128", "--prompts", "2", "--verify-prompts", "2", "--new-tokens", "8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    plan = read_plan(out)
    # every drafter was profiled and weighed: the draft model, the head, n-gram lookup
    assert [m["draft_method"] for m in plan.provenance["methods"]] == ["draft-model", "eagle", "ngram"]
    k, batch = plan.knobs.draft_length, plan.knobs.batch_size
    assert plan.measured is not None and plan.measured["decode_tokens_per_s"] > 0
    assert plan.provenance["min_budget_batch"] == batch

    # the summary line names the plan in the file, and no note judges another plan
    method = plan.knobs.method(plan.draft is not None)
    assert f"wrote plan: {method}, {plan.knobs.tree.label}, batch {batch}," in result.stdout
    notes = re.findall(r"^note: (.*)$", result.stdout, flags=re.M)
    assert notes == plan.provenance["notes"]
    for note in notes:
        if "planning plain decoding" in note:
            assert plan.draft is None and k == 0, note
        if "minimum" in note or "does not pay" in note:
            assert f"batch {batch}" in note, note

    # render_verify's table: measured beside predicted, for the plan and (with a draft) plain decoding
    # verified in whole batches of the plan's batch: 2 prompts asked, rounded up to a multiple of it
    rows = -(-2 // batch) * batch
    runs = "; runs plan, plain, plain, plan, each side's two pooled" if plan.draft is not None or k else ""
    assert f"verified on {rows} calibration prompts, up to 8 new tokens each{runs}:" in result.stdout
    assert plan.measured["run"]["prompts"] == rows
    if rows != 2:
        assert f"verify: {rows} prompts, {rows // batch} full batch(es) of the plan's batch {batch} (2 asked)" in result.stderr
    assert re.search(r"^run\s+measured tok/s \(decode\)\s+predicted tok/s\s+error\s+acceptance$", result.stdout, re.M)
    assert re.search(r"^engine \(plan\)\s+[\d,.]+\s+[\d,.]+\s+[-+][\d.]+%", result.stdout, re.M)
    if plan.draft is not None:
        assert re.search(r"^plain decoding\s+[\d,.]+\s+[\d,.]+", result.stdout, re.M)
    assert re.search(r"^target_kv\s+[\d.]+\s+[\d.]+\s+\+0\.0%$", result.stdout, re.M)  # static: the plan, to the byte
    assert "activations with the context filled" in result.stdout


def test_demo_checks_budget_and_output_before_profiling(tiny_pair, tmp_path, monkeypatch):
    """`demo --budget 1MiB` profiled for 70 s, and `-o missing/dir/x.json` failed after the whole run."""
    from engine import workflow

    def no_profiling(*args, **kwargs):
        raise AssertionError("profiled before the checks")

    from engine import method_profile

    monkeypatch.setattr(workflow, "profile_pair", no_profiling)
    monkeypatch.setattr(method_profile, "profile_methods", no_profiling)
    target, draft = tiny_pair
    base = ["demo", "-t", target, "-d", draft, "-c", "128"]
    result = CliRunner().invoke(cli, base + ["--budget", "1KiB", "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 1 and result.output.startswith("Error: the budget 1.00 KiB is below the weights alone")
    missing = tmp_path / "missing" / "dir" / "x.json"
    result = CliRunner().invoke(cli, base + ["-o", str(missing)])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not list(tmp_path.iterdir())


def test_demo_help_says_what_the_first_run_writes_where():
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "about 20 s" in text and "517 MB" in text and "$SPECMEMO_CACHE (default ~/.cache/specmemo-plan)" in text
    assert "once per file content" in text
