"""Which draft method pays under a budget (issue 15): `tune_methods` over measured profiles of several methods,
and `compare` with several --draft-method, side by side.

The profiles are made by hand with known curves, so every number is checked against its formula:
target t(B, n) = 20 ms + 0.5 ms per row of the forward (B*n), no context terms; a draft model or an EAGLE-3
head `draft_ms` per forward; n-gram drafting no device time at all, only its acceptance histogram."""

import json
from dataclasses import asdict

import pytest
from click.testing import CliRunner

import test_bad_inputs as bad_inputs
from bad_input_rows import METHOD_ROWS
from specmemo_plan.autotune import MeasuredProfile, read_measured_profile
from specmemo_plan.budget import min_budget
from specmemo_plan.cli import cli
from specmemo_plan.drafting.heads import head_shape
from specmemo_plan.drafting.trees import TreeShape
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.files import write_json_atomic
from specmemo_plan.hardware import load_profile
from specmemo_plan.measured_schema import check_measured
from specmemo_plan.memory import Knobs, breakdown
from specmemo_plan.models import load_shape
from specmemo_plan.plan import validate
from specmemo_plan.throughput import predict_speed, roofline_from_profile, tokens_per_step_distribution
from specmemo_plan.tune import prepare, tune, tune_methods

TARGET_REF, DRAFT_REF, HEAD_REF = "llama-3.1-8b-instruct", "llama-3.2-1b-instruct", "eagle3-llama3.1-instruct-8b"
TARGET = load_shape(TARGET_REF)
DRAFTERS = {"draft-model": (DRAFT_REF, load_shape(DRAFT_REF)),
            "eagle3": (HEAD_REF, head_shape("eagle3", HEAD_REF, TARGET)), "ngram": (None, None)}
C0, C1 = 20.0, 0.5  # target: ms per forward, ms per row


def fit(coefficients):
    return {"coefficients": list(coefficients), "mean_abs_pct_error": 0.0, "max_abs_pct_error": 0.0,
            "num_samples": 12, "knots": []}


def profile(method, acceptance, draft_ms=2.0, k_max=4, target_ref=TARGET_REF, name="box") -> MeasuredProfile:
    """A measured profile of `method` on a 1 TiB device: i.i.d. `acceptance` as a histogram at k_max."""
    target = load_shape(target_ref)
    ref, drafter = DRAFTERS[method]
    rows = [{"batch": b, "num_tokens": n, "context": c} for b in (1, 2, 4) for n in (1, 2) for c in (64, 2048)]
    samples = [dict(r, model="target", ms=C0 + C1 * r["batch"] * r["num_tokens"]) for r in rows]
    samples += [dict(r, model="draft", ms=draft_ms) for r in rows] if drafter else []
    return MeasuredProfile(
        device={"kind": "cpu", "name": name, "total_memory_bytes": 2**40, "profile": None},
        target={"ref": target_ref, "dtype": "fp16", "fingerprint": target.fingerprint},
        draft={"ref": ref, "dtype": "fp16", "fingerprint": drafter.fingerprint} if drafter else None,
        samples=samples, target_fit=fit((C0, C1, 0.0, 0.0)), draft_fit=fit((draft_ms, 0.0, 0.0, 0.0)) if drafter else None,
        acceptance_histogram=tokens_per_step_distribution(k_max, acceptance), acceptance_source="measured",
        draft_method=method)


def verdicts(report):
    return {r.draft_method: r.verdict for r in report.methods}


def batch_1_tokens_per_s(acceptance, draft_ms, k_max=4):
    """The fastest chain at batch 1 by hand: E = 1 + a + ... + a^k tokens per step of k drafts and a
    verify of k + 1 rows; plain decoding 1 token per C0 + C1 ms."""
    best = 1000 / (C0 + C1)
    for k in range(1, k_max + 1):
        tokens = sum(acceptance**j for j in range(k + 1))
        best = max(best, tokens / (k * draft_ms + C0 + C1 * (k + 1)) * 1000)
    return best


# ----------------------------------------------------------------------------- tune_methods


def test_the_chosen_method_flips_with_the_acceptance_histograms():
    good, poor = 0.9, 0.2
    plan, report = tune_methods([profile("draft-model", good), profile("ngram", poor)], None, 2048, 128, k_max=4,
                                max_batch=4)
    assert report.draft_method == "draft-model" and plan.knobs.draft_method == "draft-model"
    assert plan.draft.ref == DRAFT_REF and plan.knobs.draft_length >= 1
    assert verdicts(report)["draft-model"] == "chosen" and verdicts(report)["ngram"] in ("slower", "does not pay")
    plan, report = tune_methods([profile("draft-model", poor), profile("ngram", good)], None, 2048, 128, k_max=4,
                                max_batch=4)
    assert report.draft_method == "ngram" and plan.knobs.draft_method == "ngram" and plan.draft is None
    assert verdicts(report) == {"draft-model": verdicts(report)["draft-model"], "ngram": "chosen"}
    assert verdicts(report)["draft-model"] in ("slower", "does not pay")
    assert any(n.startswith("ngram: chosen: ") for n in report.notes), report.notes
    assert plan.provenance["draft_method"] == "ngram" and len(plan.provenance["methods"]) == 2
    validate(plan)


def test_predicted_speed_and_memory_by_hand():
    """At batch 1 the plan's tokens/s is the hand formula (n-gram: no draft time), its memory the breakdown's."""
    for method, draft_ms in (("ngram", 0.0), ("eagle3", 1.5), ("draft-model", 4.0)):
        plan, report = tune_methods([profile(method, 0.7, draft_ms)], None, 2048, 128, k_max=4, max_batch=1)
        assert plan.prediction.tokens_per_s == pytest.approx(batch_1_tokens_per_s(0.7, draft_ms))
        drafter = DRAFTERS[method][1]
        assert plan.prediction.memory["total_bytes"] == breakdown(TARGET, drafter, plan.knobs).total_bytes
        (row,) = report.methods
        assert row.best.total_bytes == breakdown(TARGET, drafter, row.best.knobs).total_bytes
        assert row.speedup == pytest.approx(row.best.tokens_per_s / (1000 / (C0 + C1)))


def test_a_method_over_budget_is_never_chosen():
    """The draft model accepts far more, but its smallest configuration is one byte over the budget."""
    dm, ng = profile("draft-model", 0.95), profile("ngram", 0.3)
    smallest = breakdown(TARGET, DRAFTERS["draft-model"][1],
                         Knobs(1, 2048, 1, weight_dtype="fp16", prefill_chunk=64, draft_method="draft-model")).total_bytes
    plan, report = tune_methods([dm, ng], smallest - 1, 2048, 128, k_max=4, max_batch=4)
    assert report.draft_method == "ngram" and plan.draft is None
    over = next(r for r in report.methods if r.draft_method == "draft-model")
    assert over.verdict == "over budget" and over.best is None and over.smallest_bytes == smallest
    assert any(n.startswith("draft-model (llama-3.2-1b-instruct): over budget: its smallest configuration (k=1, batch 1) "
                            "needs") for n in report.notes), report.notes
    assert plan.prediction.memory["total_bytes"] <= smallest - 1
    # one byte more: it fits, exactly at the budget, and wins at batch 1 (n-gram would take batch 2 there)
    plan, report = tune_methods([dm, ng], smallest, 2048, 128, k_max=4, max_batch=1)
    best = next(r for r in report.methods if r.draft_method == "draft-model").best
    assert report.draft_method == "draft-model" and best.total_bytes == smallest == plan.prediction.memory["total_bytes"]
    assert (best.knobs.draft_length, best.knobs.batch_size, best.knobs.chunk) == (1, 1, 64)


def test_retain_takes_the_smallest_memory_over_every_method():
    dm, ng = profile("draft-model", 0.8, 1.0), profile("ngram", 0.75)
    plan, report = tune_methods([dm, ng], None, 2048, 128, retain=0.9, k_max=4, max_batch=4)
    frontier = [c for p in (dm, ng) for c in prepare(p, None, 2048, 128, 4).search(4, None)[0].frontier]
    best = max(c.tokens_per_s for c in frontier)
    keep = min((c for c in frontier if c.tokens_per_s >= 0.9 * best), key=lambda c: c.total_bytes)
    assert plan.prediction.memory["total_bytes"] == keep.total_bytes and plan.prediction.tokens_per_s >= 0.9 * best
    fastest = max(report.methods, key=lambda r: r.best.tokens_per_s)
    if fastest.draft_method != report.draft_method:
        assert fastest.verdict == "more memory"


def test_no_method_pays_plans_plain_decoding():
    plan, report = tune_methods([profile("draft-model", 0.05, 30.0), profile("ngram", 0.0)], None, 2048, 128, k_max=4,
                                max_batch=1)
    assert plan.draft is None and plan.knobs.draft_length == 0 and report.draft_method == "none"
    assert set(verdicts(report).values()) == {"does not pay"}
    assert "planning plain decoding" in report.notes[0]


def test_tune_methods_refuses_what_cannot_be_compared():
    with pytest.raises(SpecMemoError, match="no measured profile"):
        tune_methods([], None, 2048)
    with pytest.raises(SpecMemoError, match=r"profile 2 \(ngram\) has target llama-2-7b-chat, profile 1 llama-3.1"):
        tune_methods([profile("draft-model", 0.5), profile("ngram", 0.5, target_ref="llama-2-7b-chat")], None, 2048)
    with pytest.raises(SpecMemoError, match=r"profile 2 \(ngram\) has device other, profile 1 box"):
        tune_methods([profile("draft-model", 0.5), profile("ngram", 0.5, name="other")], None, 2048)
    with pytest.raises(SpecMemoError, match=r"profiles 1 and 2 both time ngram"):
        tune_methods([profile("ngram", 0.5), profile("ngram", 0.6)], None, 2048)


def test_one_head_profile_tunes_alone():
    plan, report = tune(profile("eagle3", 0.8, 1.0), None, 2048, 128, k_max=4, max_batch=1)
    assert plan.knobs.draft_method == "eagle3" and plan.draft.ref == HEAD_REF and report.methods == ()
    assert plan.prediction.tokens_per_s == pytest.approx(batch_1_tokens_per_s(0.8, 1.0))
    validate(plan)


def test_the_search_drafts_without_a_draft_model_and_within_medusa_heads():
    from specmemo_plan.autotune import search
    from specmemo_plan.throughput import BandwidthLatency

    latency = BandwidthLatency(1000.0)
    ngram = search(TARGET, None, Knobs(1, 2048, 1, draft_method="ngram"), 2**40, latency, acceptance=0.7, k_max=6,
                   max_batch=2)
    assert ngram.best_draft is not None and ngram.best_draft.knobs.draft_method == "ngram"
    assert ngram.evaluated == 7 * 6 * 2  # k 0..6, six chunks, two batches
    vicuna = load_shape("vicuna-7b-v1.3")
    medusa = head_shape("medusa", "medusa-vicuna-7b-v1.3", vicuna)
    heads = len(medusa.layer_params)
    result = search(vicuna, medusa, Knobs(1, 2048, 1, draft_method="medusa"), 2**40, latency, acceptance=0.99,
                    k_max=16, max_batch=1)
    assert result.evaluated == (heads + 1) * 6 and result.best_draft.knobs.draft_length == heads


# ----------------------------------------------------------------------------- profile files


def test_old_files_without_draft_method_still_read(tmp_path):
    for method, expect in (("draft-model", "draft-model"), ("ngram", "none")):
        data = asdict(profile(method, 0.6))
        del data["draft_method"]  # a file written before the field (still version 1)
        if method == "ngram":
            data["acceptance_histogram"], data["acceptance_source"] = None, "none"
        write_json_atomic(data, tmp_path / "old.json")
        assert read_measured_profile(tmp_path / "old.json").draft_method == expect
    write_json_atomic(asdict(profile("ngram", 0.6)), tmp_path / "ngram.json")
    back = read_measured_profile(tmp_path / "ngram.json")
    assert back.draft_method == "ngram" and back.draft is None and back.shapes() == (TARGET, None)


def test_the_schema_checks_the_method_against_the_drafter():
    data = json.loads(json.dumps(asdict(profile("draft-model", 0.6))))
    cases = [({"draft_method": "medusa2"}, "field draft_method is 'medusa2', not one of"),
             ({"draft_method": "ngram"}, "field draft must be null for draft method ngram"),
             ({"draft_method": "mtp", "draft": None, "draft_fit": None}, "field draft is null, but draft method mtp"),
             ({"draft": dict(data["draft"], head_embedding="copied")}, "draft.head_embedding is for an EAGLE or MTP head")]
    for change, message in cases:
        with pytest.raises(SpecMemoError, match=message):
            check_measured(data | change, "m.json")
    assert check_measured(data | {"draft_method": None}, "m.json")["draft_method"] is None  # derived on load


# ----------------------------------------------------------------------------- compare


def test_compare_weighs_every_method_side_by_side():
    args = ["compare", "-t", TARGET_REF, "--draft-method", f"draft-model={DRAFT_REF}", "--draft-method",
            f"eagle3={HEAD_REF}", "--draft-method", "ngram", "--profiles", "rtx-4090,t4", "-c", "4096", "-b", "4", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [m["draft_method"] for m in data["draft_methods"]] == ["draft-model", "eagle3", "ngram"]
    rtx, t4 = data["devices"]
    gpu = load_profile("rtx-4090")
    latency = roofline_from_profile(gpu, "fp16")
    for row in rtx["methods"]:
        method, drafter = row["draft_method"], DRAFTERS[row["draft_method"]][1]
        knobs = Knobs(row["batch"], 4096, 1, weight_dtype="fp16", prefill_chunk=512,
                      draft_method=method).with_tree(TreeShape(**row["tree"]))
        assert row["total_bytes"] == breakdown(TARGET, drafter, knobs, gpu.runtime_overhead_bytes).total_bytes
        assert row["tokens_per_s"] == pytest.approx(predict_speed(TARGET, drafter, knobs, latency,
                                                                  acceptance=row["acceptance"]).tokens_per_s)
        assert row["speedup"] == pytest.approx(row["tokens_per_s"] / row["plain_tokens_per_s"])
        mb = min_budget(TARGET, drafter, Knobs(1, 4096, 1, weight_dtype="fp16", draft_method=method), latency,
                        device_overhead_bytes=gpu.runtime_overhead_bytes, acceptance=row["acceptance"])
        assert row["min_budget_bytes"] == mb.total_bytes and row["pays"] == (row["speedup"] > 1)
    paying = [r for r in rtx["methods"] if r["pays"]]
    assert rtx["best_method"] == max(paying, key=lambda r: r["tokens_per_s"])["draft_method"]
    # the best draft is searched over trees too where the method drafts them, chains where it does not
    shapes = {r["draft_method"]: r["tree"] for r in rtx["methods"]}
    assert shapes["draft-model"]["topk"] == 1 and shapes["eagle3"]["topk"] > 1
    # the 16 GB T4 holds no 8B fp16 target with a 4096 context: every row says so, none is chosen
    assert t4["best_method"] is None and all(m["tokens_per_s"] is None for m in t4["methods"])
    assert {m["note"] for m in t4["methods"]} == {"the target does not fit at batch 1 with this context"}
    text = CliRunner().invoke(cli, args[:-1]).stdout
    assert "eagle3" in text and "cheapest budget that pays GiB" in text


def test_compare_all_lists_a_method_that_cannot_be_built():
    result = CliRunner().invoke(cli, ["compare", "-t", TARGET_REF, "-d", DRAFT_REF, "--draft-method", "all",
                                      "--profiles", "rtx-4090", "--json"])
    assert result.exit_code == 0, result.output
    (device,) = json.loads(result.stdout)["devices"]
    assert [m["draft_method"] for m in device["methods"]] == ["draft-model", "ngram", "mtp"]
    assert "no multi-token-prediction layers" in device["methods"][2]["note"]


def test_compare_measured_methods_use_their_own_curves(tmp_path):
    write_json_atomic(asdict(profile("ngram", 0.7)), tmp_path / "ng.json")
    write_json_atomic(asdict(profile("draft-model", 0.7, 4.0)), tmp_path / "dm.json")
    result = CliRunner().invoke(cli, ["compare", "--measured", str(tmp_path / "ng.json"), "--measured",
                                      str(tmp_path / "dm.json"), "-c", "2048", "--json"])
    assert result.exit_code == 0, result.output
    (box,) = json.loads(result.stdout)["devices"]  # one device, its two measured methods side by side
    assert box["profile"] == "measured:ng+dm" and box["name"] == "box"
    ng, dm = box["methods"]
    assert (ng["draft_method"], dm["draft_method"]) == ("ngram", "draft-model")
    for row, draft_ms in ((ng, 0.0), (dm, 4.0)):
        assert row["tokens_per_s"] == pytest.approx(batch_1_tokens_per_s(0.7, draft_ms))
        assert row["plain_tokens_per_s"] == pytest.approx(1000 / (C0 + C1))
    assert box["best_method"] == "ngram" and ng["tokens_per_s"] > dm["tokens_per_s"]
    # another device's profile is another device
    write_json_atomic(asdict(profile("draft-model", 0.7, 4.0, name="other")), tmp_path / "other.json")
    result = CliRunner().invoke(cli, ["compare", "--measured", str(tmp_path / "ng.json"), "--measured",
                                      str(tmp_path / "other.json"), "-c", "2048", "--json"])
    assert [d["profile"] for d in json.loads(result.stdout)["devices"]] == ["measured:ng", "measured:other"]


def test_compare_one_draft_model_is_unchanged():
    result = CliRunner().invoke(cli, ["compare", "-t", "llama-2-7b-chat", "-d", "llama-68m", "--profiles", "rtx-4090",
                                      "--json"])
    data = json.loads(result.stdout)
    assert set(data) == {"target", "draft", "context", "max_batch", "acceptance", "acceptance_source", "devices"}
    assert "methods" not in data["devices"][0] and data["devices"][0]["best_draft_length"] >= 1


@pytest.mark.parametrize("row", METHOD_ROWS)
def test_method_rows(row, tmp_path, monkeypatch):
    """bad_input_rows.METHOD_ROWS, judged as test_bad_inputs judges its table."""
    bad_inputs.test_bad_input(row, tmp_path, monkeypatch)
