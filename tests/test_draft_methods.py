"""Draft methods: head layouts by hand, buffers, n-gram, monotone memory, min-budget per method, plans."""

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from specmemo_plan.budget import min_budget, need_per_device
from specmemo_plan.cli import cli as main
from specmemo_plan.drafting.heads import head_shape
from specmemo_plan.drafting.methods import recognise
from specmemo_plan.memory import Knobs, breakdown, candidate_buffer_specs
from specmemo_plan.models import load_shape
from specmemo_plan.plan import read_plan, validate
from specmemo_plan.throughput import BandwidthLatency

TARGET = load_shape("llama-3.1-8b-instruct")
EAGLE3 = head_shape("eagle3", "eagle3-llama3.1-instruct-8b", TARGET)
H, V, VD = 4096, 128256, 32000


def test_eagle3_head_weights_by_layout():
    fc = 3 * H * H
    attention = 2 * H * (32 + 2 * 8) * 128 + 32 * 128 * H
    layer = attention + 3 * H * 14336 + 3 * H
    assert EAGLE3.num_params == fc + layer + H + VD * H == 424_689_664
    b = breakdown(TARGET, EAGLE3, Knobs(1, 4096, 4, draft_method="eagle3"))
    maps = {s.name: s.nbytes for s in candidate_buffer_specs(TARGET, EAGLE3, Knobs(1, 4096, 4, draft_method="eagle3"))}
    assert maps["draft_d2t"] == VD * 8 and maps["draft_t2d"] == V
    real = 849_763_584  # 424,689,664 fp16 parameters + d2t int64[32000] + t2d bool[128256]
    assert abs(b.components["draft_weights"] + maps["draft_d2t"] + maps["draft_t2d"] - real) / real < 0.01
    assert b.components["draft_kv"] == 2 * 8 * 128 * 2 * (4096 + 4)  # one layer over C + T
    copied = head_shape("eagle3", "eagle3-llama3.1-instruct-8b", TARGET, "copied")
    assert copied.num_params - EAGLE3.num_params == V * H


def test_recognition():
    assert recognise({"architectures": ["LlamaForCausalLMEagle3"]}) == "eagle3"
    assert recognise({"architectures": ["Eagle3LlamaForCausalLM"]}) == "eagle3"
    assert recognise({"draft_vocab_size": 32000}) == "eagle3"
    assert recognise({"architectures": ["EagleLlamaForCausalLM"]}) == "eagle"
    assert recognise({"medusa_num_heads": 5}) == "medusa"
    assert recognise({"architectures": ["LlamaForCausalLM"]}) is None


def test_eagle1_and_medusa_by_hand():
    vicuna = load_shape("vicuna-7b-v1.3")
    e = head_shape("eagle", "eagle-vicuna-7b-v1.3", vicuna)
    h = 4096
    assert e.num_params == 2 * h * h + h + 4 * h * h + 3 * h * 11008 + h  # fc+bias, layer, one norm
    assert e.vocab_size == 32000  # logits over the target's lm_head
    m = head_shape("medusa", "medusa-vicuna-7b-v1.3", vicuna)
    heads = len(m.layer_params)
    assert m.num_params == heads * (h * h + h + 32000 * h)
    b = breakdown(vicuna, m, Knobs(1, 2048, heads, draft_method="medusa"))
    assert b.components["draft_kv"] == 0


def test_mtp_from_the_target():
    ds = load_shape("deepseek-v2-lite")
    with pytest.raises(Exception, match="no multi-token-prediction"):
        head_shape("mtp", None, ds)


def test_ngram_zero_draft_and_buffers_grow_with_k():
    sizes = []
    for k in (1, 2, 4, 8):
        knobs = Knobs(2, 4096, k, draft_method="ngram")
        b = breakdown(TARGET, None, knobs)
        assert b.components["draft_weights"] == 0 and b.components["draft_kv"] == 0
        specs = {s.name: s for s in candidate_buffer_specs(TARGET, None, knobs)}
        assert specs["candidate_tokens"].shape == (2, k)
        sizes.append(b.components["candidate_buffers"])
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_draft_model_numbers_unchanged():
    draft = load_shape("llama-3.2-1b-instruct")
    old = breakdown(TARGET, draft, Knobs(1, 4096, 4))
    new = breakdown(TARGET, draft, Knobs(1, 4096, 4, draft_method="draft-model"))
    assert old == new


CASES = [("eagle3", EAGLE3, True), ("ngram", None, True), ("draft-model", load_shape("llama-3.2-1b-instruct"), False)]


@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from(CASES), depth=st.integers(1, 4), topk=st.integers(1, 4), extra=st.integers(0, 8),
       batch=st.integers(1, 4), context=st.integers(64, 8192))
def test_memory_never_falls(case, depth, topk, extra, batch, context):
    method, draft, tree_ok = case
    topk = topk if tree_ok else 1
    cap = topk + (depth - 1) * topk * topk

    def total(d, t, T, b, c):
        T = min(max(T, d), t + (d - 1) * t * t)
        kn = Knobs(b, c, T, draft_method=method, tree_depth=d, tree_topk=t)
        return breakdown(TARGET, draft, kn).total_bytes

    T = min(depth + extra, cap)
    base = total(depth, topk, T, batch, context)
    assert total(depth, topk, T + 1, batch, context) >= base or T + 1 > cap
    assert total(depth, topk, T, batch + 1, context) >= base
    assert total(depth, topk, T, batch, context + 1) >= base
    if tree_ok:
        assert total(depth, topk + 1, T, batch, context) >= base
    assert total(depth + 1, topk, max(T, depth + 1), batch, context) >= base


@pytest.mark.parametrize("method,draft", [("eagle3", EAGLE3), ("ngram", None),
                                          ("draft-model", load_shape("llama-3.2-1b-instruct"))])
def test_min_budget_feasible_and_one_byte_less_is_not(method, draft):
    knobs = Knobs(1, 4096, 1, draft_method=method)
    latency = BandwidthLatency(1000.0)
    mb = min_budget(TARGET, draft, knobs, latency, acceptance=0.7)
    from dataclasses import replace
    chosen = replace(knobs, draft_length=mb.draft_length, tree_depth=None if mb.tree.is_chain else mb.tree.depth,
                     tree_topk=None if mb.tree.is_chain else mb.tree.topk)
    assert need_per_device(TARGET, draft, chosen) == mb.total_bytes
    assert breakdown(TARGET, draft, chosen).total_bytes <= mb.total_bytes
    # one byte less: every shape that pays needs more than that (the search's own shapes)
    from specmemo_plan.budget import search_shapes
    from specmemo_plan.throughput import predict_speed
    for tree in search_shapes(TARGET, draft, knobs, 16):
        kk = replace(knobs, draft_length=tree.tokens, tree_depth=None if tree.is_chain else tree.depth,
                     tree_topk=None if tree.is_chain else tree.topk)
        if predict_speed(TARGET, draft, kk, latency, acceptance=0.7).speedup > 1:
            assert breakdown(TARGET, draft, kk).total_bytes > mb.total_bytes - 1


def test_cli_plan_round_trip_and_compare(tmp_path):
    runner = CliRunner()
    out = tmp_path / "e3.json"
    r = runner.invoke(main, ["plan", "-t", "llama-3.1-8b-instruct", "-d", "eagle3-llama3.1-instruct-8b", "-p", "rtx-4090",
                             "-c", "4096", "-k", "8", "--tree-depth", "3", "--tree-topk", "2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    p = read_plan(out)
    assert p.knobs.draft_method == "eagle3" and p.knobs.tree.topk == 2
    validate(p)
    r = runner.invoke(main, ["fit", "-t", "llama-3.1-8b-instruct", "--draft-method", "draft-model=llama-3.2-1b-instruct",
                             "--draft-method", "eagle3=eagle3-llama3.1-instruct-8b", "--draft-method", "ngram",
                             "-p", "rtx-4090", "--budget", "24GB", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["estimate", "-t", "llama-3.1-8b-instruct", "--draft-method", "mtp"])
    assert r.exit_code == 1 and "no multi-token-prediction layers" in r.output
    r = runner.invoke(main, ["estimate", "-t", "llama-3.1-8b-instruct", "--draft-method", "ngram", "-d", "llama-3.2-1b-instruct"])
    assert r.exit_code == 1 and "has no draft model" in r.output
