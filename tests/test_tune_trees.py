"""tune and compare search token trees (issue 15, item 3): the shapes tried, that the plan is the best of them by
the tree model, and that the search prices nothing it did not time.

Profiles are made by hand as in test_method_choice: target t(B, n) = 20 ms + 0.5 ms per row (B*n), a head
`draft_ms` per forward whatever its width; the acceptance an i.i.d. histogram at k_max."""

import json
from dataclasses import asdict, replace

import pytest
from click.testing import CliRunner

from specmemo_plan.autotune import MeasuredProfile
from specmemo_plan.cli import cli
from specmemo_plan.drafting.heads import head_shape
from specmemo_plan.drafting.trees import (MAX_TREE_TOPK, TreeShape, check_tree, eagle_head_slots, runtime_runs,
                                          runtime_shapes, tree_capacity)
from specmemo_plan.files import write_json_atomic
from specmemo_plan.memory import breakdown
from specmemo_plan.models import load_shape
from specmemo_plan.plan import validate
from specmemo_plan.throughput import predict_speed, tokens_per_step_distribution
from specmemo_plan.tune import tune, tune_methods

TARGET_REF, HEAD_REF = "bundled:smollm2-135m-instruct", "bundled:smollm2-135m-eagle"
TARGET = load_shape(TARGET_REF)
HEAD = head_shape("eagle", HEAD_REF, TARGET)
C0, C1 = 20.0, 0.5


def fit(coefficients):
    return {"coefficients": list(coefficients), "mean_abs_pct_error": 0.0, "max_abs_pct_error": 0.0,
            "num_samples": 12, "knots": []}


def profile(method, acceptance, tokens=(1, 2, 4, 9), draft_ms=1.0, k_max=6, c1=C1) -> MeasuredProfile:
    """`method` (eagle or ngram) timed over `tokens` new tokens per forward, on a 1 TiB device."""
    head = method == "eagle"
    rows = [{"batch": b, "num_tokens": n, "context": c} for b in (1, 2, 4) for n in tokens for c in (64, 1024)]
    samples = [dict(r, model="target", ms=C0 + c1 * r["batch"] * r["num_tokens"]) for r in rows]
    samples += [dict(r, model="draft", ms=draft_ms) for r in rows] if head else []
    return MeasuredProfile(
        device={"kind": "cpu", "name": "box", "total_memory_bytes": 2**40, "profile": None},
        target={"ref": TARGET_REF, "dtype": "bf16", "fingerprint": TARGET.fingerprint},
        draft={"ref": HEAD_REF, "dtype": "bf16", "fingerprint": HEAD.fingerprint} if head else None,
        samples=samples, target_fit=fit((C0, c1, 0.0, 0.0)), draft_fit=fit((draft_ms, 0.0, 0.0, 0.0)) if head else None,
        acceptance_histogram=tokens_per_step_distribution(k_max, acceptance), acceptance_source="measured",
        draft_method=method)


# ----------------------------------------------------------------------------- the shapes tried


@pytest.mark.parametrize("method", ["eagle", "ngram", "draft-model", "eagle3", "medusa", "mtp"])
def test_runtime_shapes_are_chains_and_the_trees_the_runtime_runs(method):
    shapes = runtime_shapes(method, k_max=6, max_tokens=16, max_topk=4)
    assert [s for s in shapes if s.is_chain] == [TreeShape(k, 1, k) for k in range(1, 7)]
    trees = [s for s in shapes if not s.is_chain]
    if method not in ("eagle", "ngram"):  # the runtime verifies chains only for them
        assert trees == []
        return
    assert trees and len(set(trees)) == len(trees)
    for t in trees:
        check_tree(t)  # depth <= T <= capacity
        assert 2 <= t.depth <= 6 and t.depth < t.tokens <= 16 and t.topk in (2, 4)
        assert runtime_runs(method, t)
        if method == "eagle":
            assert eagle_head_slots(t) <= t.tokens + 1
    # every T to 16 is tried where the tree can hold it: T = 7 at depth 3, top-k 2 (capacity 2 + 2 * 4 = 10)
    assert TreeShape(3, 2, 7) in trees and tree_capacity(3, 2) == 10
    if method == "eagle":  # depth 6 x top-4 writes 20 head slots: over T + 1 for every T <= 16
        assert not any(t.depth == 6 and t.topk == 4 for t in trees)
    else:
        assert TreeShape(6, 4, 16) in trees


def test_a_profile_prices_trees_only_inside_what_it_timed():
    narrow, wide = profile("eagle", 0.8, tokens=(1, 2)), profile("eagle", 0.8, tokens=(1, 2, 4, 9))
    assert all(s.is_chain or s.tokens <= 1 for s in narrow.search_shapes(6))  # T + 1 <= 2: no tree at all
    trees = [s for s in wide.search_shapes(6) if not s.is_chain]
    assert trees and max(t.tokens for t in trees) == 8 and max(t.topk for t in trees) == 8
    ngram = profile("ngram", 0.8, tokens=(1, 2, 4, 9))  # no draft forward timed: top-k is not bounded by one
    assert max(t.topk for t in ngram.search_shapes(6) if not t.is_chain) == max(k for k in (2, 4, 8) if k <= MAX_TREE_TOPK)


# ----------------------------------------------------------------------------- tune


def best_by_hand(measured: MeasuredProfile, batch: int, new_tokens: int):
    """The fastest shape at `batch` by the tree model over every shape the profile prices, plain decoding
    included (0 stands for it)."""
    latency, hist = measured.latency(), measured.acceptance_histogram
    drafter = HEAD if measured.draft_method == "eagle" else None
    from specmemo_plan.memory import Knobs

    base = Knobs(batch, 1024, 1, weight_dtype="bf16", draft_method=measured.draft_method, prefill_chunk=1024)
    best = (predict_speed(TARGET, None, replace(base, draft_length=0, draft_method=None), latency).tokens_per_s, 0)
    for shape in measured.search_shapes(6):
        speed = predict_speed(TARGET, drafter, base.with_tree(shape), latency, histogram=hist, new_tokens=new_tokens)
        best = max(best, (speed.tokens_per_s, shape), key=lambda x: x[0])
    return best


@pytest.mark.parametrize("method", ["eagle", "ngram"])
def test_tune_plans_a_tree_when_the_tree_model_says_it_is_fastest(method):
    measured = profile(method, 0.6, c1=0.05)  # verify rows almost free: wide trees pay
    plan, report = tune(measured, None, 1024, 128, k_max=6, max_batch=1)
    speed, shape = best_by_hand(measured, 1, 128)
    assert shape != 0 and not shape.is_chain
    assert plan.knobs.tree == shape and plan.prediction.tokens_per_s == pytest.approx(speed)
    validate(plan)  # the plan file's prediction is the one its knobs give
    assert report.result.evaluated > len(measured.search_shapes(6))  # every shape was searched
    chains = [c for c in report.result.frontier if c.knobs.draft_length and c.knobs.tree.is_chain]
    assert all(c.tokens_per_s < plan.prediction.tokens_per_s for c in chains)


def test_tune_keeps_a_chain_when_verify_rows_are_dear():
    measured = profile("eagle", 0.6, c1=5.0)  # each extra verified row costs a quarter of a forward
    plan, _ = tune(measured, None, 1024, 128, k_max=6, max_batch=1)
    speed, shape = best_by_hand(measured, 1, 128)
    assert plan.knobs.tree == shape and shape.is_chain
    assert plan.prediction.tokens_per_s == pytest.approx(speed)


def test_measured_siblings_that_catch_nothing_keep_tune_on_chains():
    """The same cheap verify rows that make trees pay by the geometric ranks: with a measured rank histogram
    whose siblings never held the target's token, every tree is worth its chain at a wider verify."""
    measured = replace(profile("eagle", 0.6, c1=0.05), rank_histogram=[40, 60] + [0] * 9)
    plan, report = tune(measured, None, 1024, 128, k_max=6, max_batch=1)
    assert plan.knobs.tree.is_chain and plan.knobs.draft_length >= 1
    geometric, _ = tune(profile("eagle", 0.6, c1=0.05), None, 1024, 128, k_max=6, max_batch=1)  # no ranks
    assert not geometric.knobs.tree.is_chain
    # and with siblings as likely as the geometric ranks say, the tree comes back
    a = 0.6
    likely = [40, 100] + [round(100 * (1 - a) ** r) for r in range(1, 10)]
    back, _ = tune(replace(profile("eagle", a, c1=0.05), rank_histogram=likely), None, 1024, 128, k_max=6, max_batch=1)
    assert not back.knobs.tree.is_chain


def test_ngram_trees_default_to_the_measured_ngram_siblings():
    """Without a measured rank histogram n-gram trees read methods.NGRAM_RANKS (its siblings rarely hold the
    target's token), not the geometric ranks; the other methods keep the geometric ones."""
    from specmemo_plan.drafting.methods import NGRAM_RANKS, get_method
    from specmemo_plan.memory import Knobs

    measured = profile("ngram", 0.6)
    latency, hist = measured.latency(), measured.acceptance_histogram
    knobs = Knobs(1, 1024, 1, weight_dtype="bf16", draft_method="ngram").with_tree(TreeShape(3, 4, 8))
    default = predict_speed(TARGET, None, knobs, latency, histogram=hist).expected_tokens_per_step
    assert default == predict_speed(TARGET, None, knobs, latency, histogram=hist, ranks=NGRAM_RANKS).expected_tokens_per_step
    geometric = [1, 1000] + [round(1000 * 0.4**r) for r in range(1, 10)]
    assert default < predict_speed(TARGET, None, knobs, latency, histogram=hist, ranks=geometric).expected_tokens_per_step
    assert get_method("eagle").default_ranks is None and "measured" in get_method("ngram").ranks_source


def test_a_tree_plan_fits_the_budget_and_its_notes_name_the_tree():
    measured = profile("eagle", 0.6, c1=0.05)
    unbounded, _ = tune(measured, None, 1024, 128, k_max=6, max_batch=1)
    # a budget one byte under the tree's memory: the plan is something smaller, inside it
    budget = unbounded.prediction.memory["total_bytes"] - 1
    plan, report = tune(replace(measured, device=dict(measured.device)), budget, 1024, 128, k_max=6, max_batch=1)
    assert plan.prediction.memory["total_bytes"] <= budget and plan.knobs.tree != unbounded.knobs.tree
    memory = breakdown(TARGET, HEAD if plan.knobs.draft_length else None, plan.knobs).total_bytes
    assert memory == plan.prediction.memory["total_bytes"]
    fastest = report.result.fastest.as_dict()
    assert fastest["tree"] == plan.knobs.tree.as_dict() and fastest["draft_length"] == plan.knobs.tree.tokens


def test_tune_methods_table_and_summary_name_the_tree(tmp_path):
    paths = []
    for method in ("eagle", "ngram"):
        path = tmp_path / f"{method}.json"
        write_json_atomic(asdict(profile(method, 0.6 if method == "eagle" else 0.3, c1=0.05)), path)
        paths.append(str(path))
    plan_path = tmp_path / "plan.json"
    args = ["tune", "--measured", paths[0], "--measured", paths[1], "-c", "1024", "--max-batch", "1",
            "--max-new-tokens", "128", "--k-max", "6", "-o", str(plan_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    plan = json.loads(plan_path.read_text())
    tree = TreeShape(plan["knobs"]["tree_depth"], plan["knobs"]["tree_topk"], plan["knobs"]["draft_length"])
    assert f"wrote plan: eagle, {tree.label}, batch 1," in result.stdout
    assert f"eagle ({HEAD_REF}): chosen: " in result.stdout and tree.label in result.stdout


@pytest.mark.parametrize("ranks,message", [([5, 0, 1], "counts no depth-1 draft of rank 1"),
                                           ([5, -1, 1], r"rank_histogram\[1\] must be a number >= 0"),
                                           ([3], "must be null or a list of at least 2 counts"),
                                           ([0, 0], "counts no step")])
def test_a_bad_rank_histogram_is_refused_in_one_line(ranks, message):
    from specmemo_plan.errors import SpecMemoError
    from specmemo_plan.measured_schema import check_measured

    data = json.loads(json.dumps(asdict(profile("eagle", 0.6))))
    assert check_measured(data | {"rank_histogram": [40, 60, 0]}, "m.json")["rank_histogram"] == [40, 60, 0]
    with pytest.raises(SpecMemoError, match=message):
        check_measured(data | {"rank_histogram": ranks}, "m.json")
