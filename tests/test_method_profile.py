"""`profile --draft-method` and `tune --measured` repeated: the device-side choice among draft methods
(engine/method_profile.py, specmemo_plan.tune.tune_methods), on tiny models (CPU, offline).

What must hold: an EAGLE-head profile and an n-gram profile carry their method, the target's fit and an
acceptance histogram measured by the engine at k_max; n-gram has no draft samples; `tune` with both picks
one of them (or plain decoding), writes that method into the plan, and its notes name every method.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from specmemo_plan.autotune import read_measured_profile
from specmemo_plan.cli import cli
from specmemo_plan.drafting.trees import RANKED
from specmemo_plan.plan import read_plan

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["-c", "96", "--max-batch", "2", "--prompts", "2", "--k-max", "3", "--repeats", "1"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    from test_engine_eagle import save_head
    from test_engine_ngram import save_cycle_model

    root = tmp_path_factory.mktemp("method_profile")
    target = save_cycle_model(root / "target", 0.1)
    head = save_head(root / "head", target)
    out = {}
    for method, extra in (("eagle", ["-d", head]), ("ngram", [])):
        path = root / f"{method}.json"
        result = CliRunner().invoke(cli, ["profile", "-t", target, *extra, "--draft-method", method, *SMALL,
                                          "-o", str(path)])
        assert result.exit_code == 0, result.output
        out[method] = path
    return target, head, out


def test_profiles_carry_method_fit_and_engine_histogram(profiled):
    target, head, paths = profiled
    eagle, ngram = (json.loads(paths[m].read_text()) for m in ("eagle", "ngram"))
    assert eagle["draft_method"] == "eagle" and ngram["draft_method"] == "ngram"
    assert eagle["target"]["fingerprint"] == ngram["target"]["fingerprint"]
    assert eagle["draft_fit"] is not None and ngram["draft_fit"] is None and ngram["draft"] is None
    assert not any(s["model"] == "draft" for s in ngram["samples"])
    for data in (eagle, ngram):
        assert len(data["acceptance_histogram"]) == 4 and sum(data["acceptance_histogram"]) > 0
        assert data["notes"]["acceptance_run"]["method"] == "engine"
    assert sum(eagle["acceptance_histogram"][1:]) > 0  # the built head drafts the cycle target's successors
    # the depth-1 ranks the tree model reads for siblings: one per row-step; greedy, rank 1 = first draft accepted
    for data in (eagle, ngram):
        ranks, hist = data["rank_histogram"], data["acceptance_histogram"]
        assert len(ranks) == RANKED + 1 and sum(ranks) == sum(hist) and ranks[1] == sum(hist[1:])
    assert {s["num_tokens"] for s in eagle["samples"] if s["model"] == "draft"} == {1, 2, 4, 8}  # tree widths


def test_tune_chooses_among_the_profiled_methods(profiled, tmp_path):
    target, head, paths = profiled
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(cli, ["tune", "--measured", str(paths["eagle"]), "--measured", str(paths["ngram"]),
                                      "--budget", "64MiB", "-c", "96", "--max-batch", "2", "--k-max", "3",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    plan = read_plan(out)
    method = plan.knobs.method(plan.draft is not None)
    assert method in ("eagle", "ngram", "none")
    assert [m["draft_method"] for m in plan.provenance["methods"]] == ["eagle", "ngram"]
    assert "weighed 2 draft methods" in result.stdout
    # whatever shape it chose (a chain or a tree), the engine runs the plan as written
    from engine.runtime import Engine

    out_tokens = Engine(plan, tokenizer=None).generate([[3, 4, 5, 6, 7, 8]], max_new_tokens=6).outputs[0].token_ids
    assert len(out_tokens) >= 1
    shapes = read_measured_profile(paths["eagle"]).search_shapes(3)
    assert any(not s.is_chain for s in shapes)  # trees were on the table: the grid timed wide enough forwards


def test_profile_refuses_what_the_method_cannot_take(profiled, tmp_path):
    target, head, _ = profiled
    out = str(tmp_path / "p.json")
    result = CliRunner().invoke(cli, ["profile", "-t", target, "-d", head, "--draft-method", "ngram", "-o", out])
    assert result.exit_code == 1 and "drop -d" in result.output
    result = CliRunner().invoke(cli, ["profile", "-t", target, "--draft-method", "eagle", "-o", out])
    assert result.exit_code == 1 and "needs the head" in result.output
