"""n-gram drafting in the engine (issue 17 item 1), on tiny random models (CPU, offline).

What must hold: the lookup (longest suffix first, the most recent occurrence followed by k tokens);
static memory equal to the plan's ngram buffers to the byte (no draft weights, no draft KV); greedy
output equal to transformers' generate and to the engine's plain decoding, batch 1 and batch 4 with
rows of different lengths where some rows propose and others do not; lossless sampling with
deterministic proposals (chi-square); refusals of what the engine does not run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import ngram as ngram_module
from engine.checks import check_supported
from engine.ngram import propose
from engine.runtime import Engine
from engine.speculative import Sampler
from specmemo_plan.errors import SpecMemoError

from conftest import make_test_plan, needs_smollm2
from test_engine import _chi2_pvalue, _exact_marginals, hf_greedy

pytestmark = pytest.mark.usefixtures("one_thread")

REPETITIVE = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]
PROMPTS = [REPETITIVE, [10, 11, 12], list(range(20, 40)), [100, 7, 42, 42, 9, 200, 17, 42, 42]]


def ngram_plan(target: str, k: int = 3, **kwargs):
    """make_test_plan's plan, made by the planner with Knobs(draft_method="ngram", draft_length=k)."""
    import dataclasses

    from specmemo_plan.models import load_shape
    from specmemo_plan.plan import make_plan

    base = make_test_plan(target, None, **kwargs)
    knobs = dataclasses.replace(base.knobs, draft_method="ngram", draft_length=k)
    return make_plan(target, load_shape(target), None, None, knobs, base.device, base.budget_bytes,
                     generation=base.generation)


def ngram_engine(target: str, k: int = 3, **kwargs) -> Engine:
    return Engine(ngram_plan(target, k, **kwargs), tokenizer=None)


def save_cycle_model(folder, scale: float) -> str:
    """A tiny Llama that tends to continue cycles of 4 tokens (t -> 4(t // 4) + (t + 1) % 4): the
    layers' outputs are scaled by `scale` so the residual stream is about the token's embedding, and
    the output row of f(t) is t's embedding. Scale 0.1: cycles broken now and then (proposals accepted
    in part); 0.03: clean cycles with wide margins."""
    from conftest import save_tiny_model

    model = save_tiny_model(folder, seed=5)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(scale)
            layer.mlp.down_proj.weight.mul_(scale)
        emb = model.model.embed_tokens.weight
        successor = torch.tensor([4 * (t // 4) + (t + 1) % 4 for t in range(emb.shape[0])])
        model.lm_head.weight[successor] = emb
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def cycle_target(tmp_path_factory):
    return save_cycle_model(tmp_path_factory.mktemp("cycle") / "target", 0.1)


@pytest.fixture(scope="module")
def clean_cycle_target(tmp_path_factory):
    return save_cycle_model(tmp_path_factory.mktemp("clean_cycle") / "target", 0.03)


@pytest.fixture(scope="module")
def hf_target(tiny_pair):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_pair[0], dtype=torch.float32).eval()


# ----------------------------------------------------------------------------- the lookup


def test_lookup_longest_match_most_recent_full_continuation():
    assert propose([1, 2, 3, 4, 9, 9, 1, 2, 3], 2) == [4, 9]  # "1 2 3" occurred: what followed it
    assert propose([1, 2, 3], 3) == []  # no earlier occurrence of any suffix
    assert propose([7], 3) == []
    # longest first: the 2-gram "5 6" wins over the more recent 1-gram "6"
    assert propose([5, 6, 1, 6, 2, 5, 6], 1) == [1]
    # of the occurrences, the most recent followed by k tokens ...
    assert propose([1, 2, 8, 8, 1, 2, 9, 9, 1, 2], 2) == [9, 9]
    # ... else the one followed by the most (a period shorter than k)
    assert propose([4, 4, 4, 4, 4], 3, max_n=1, min_n=1) == [4, 4, 4]
    assert propose([4, 4, 4, 4, 4], 3) == [4]  # the longest match wins, however little follows it
    assert propose([3, 1, 3, 1, 3], 4, max_n=1, min_n=1) == [1, 3, 1, 3]
    # single tokens are not looked up by default (NGRAM_MIN = 2), only when asked
    assert propose([1, 9, 5, 1], 2) == [] and propose([1, 9, 5, 1], 2, min_n=1) == [9, 5]
    assert propose([1, 2, 1, 2, 1], 3) == [2, 1]  # "1 2 1" at 0, followed by two tokens only


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("dtype,batch,k", [("fp32", 1, 3), ("fp32", 4, 4), ("bf16", 2, 2), ("fp16", 1, 5)])
def test_static_memory_equals_plan_to_the_byte(tiny_pair, dtype, batch, k):
    engine = ngram_engine(tiny_pair[0], k, dtype=dtype, batch_size=batch, max_context=48)
    predicted = engine.plan.prediction.memory["components"]
    measured = engine.static_bytes()
    for name in ("target_weights", "draft_weights", "target_kv", "draft_kv", "candidate_buffers"):
        assert measured[name] == predicted[name], name
    assert measured["draft_weights"] == measured["draft_kv"] == 0 and engine.draft is None
    assert engine.buffers.candidate_tokens.shape == (batch, k)
    assert engine.buffers.target_logits.dtype == torch.float32  # the plan's sampler dtype
    report = engine.memory_report()["measured"]
    assert all(report["error_percent"][name] == 0.0 for name in measured)


# ----------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_equals_transformers_and_plain(tiny_pair, hf_target, k):
    """A random target (its output seldom repeats: mostly no proposal, or a rejected one)."""
    engine = ngram_engine(tiny_pair[0], k, max_context=64, max_new_tokens=24)
    plain = Engine(make_test_plan(tiny_pair[0], None, max_context=64, max_new_tokens=24), tokenizer=None)
    for prompt in PROMPTS:
        result = engine.generate([prompt])
        assert result.outputs[0].token_ids == hf_greedy(hf_target, prompt, 24)
        assert result.outputs[0].token_ids == plain.generate([prompt]).outputs[0].token_ids


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_on_repeating_output_accepts_and_equals_plain(cycle_target, k):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(cycle_target, dtype=torch.float32).eval()
    engine = ngram_engine(cycle_target, k, max_context=64, max_new_tokens=24)
    plain = Engine(make_test_plan(cycle_target, None, max_context=64, max_new_tokens=24), tokenizer=None)
    for prompt in PROMPTS:
        result = engine.generate([prompt], ignore_eos=True)
        assert result.outputs[0].token_ids == plain.generate([prompt], ignore_eos=True).outputs[0].token_ids
    assert engine.generate([PROMPTS[1]]).outputs[0].token_ids == hf_greedy(hf, PROMPTS[1], 24)
    stats = engine.generate([REPETITIVE], ignore_eos=True).stats
    assert sum(stats.accepted_histogram) == stats.steps  # one row: one histogram entry per step
    assert sum(stats.accepted_histogram[1:]) > 0  # the repeating prompt gets proposals accepted
    assert stats.new_tokens == 24 <= 1 + sum((i + 1) * n for i, n in enumerate(stats.accepted_histogram))
    assert stats.steps < 23  # fewer target forwards than plain decoding's


def test_bf16_weights_fp32_logits_buffer(clean_cycle_target):
    """bf16 weights beside the plan's fp32 verify logits (FloatLogitsDecoder): prefill, plain steps and
    verifies run; on a target with wide margins the output is plain bf16 decoding's."""
    engine = ngram_engine(clean_cycle_target, 3, batch_size=2, dtype="bf16", max_context=64, max_new_tokens=20)
    plain = Engine(make_test_plan(clean_cycle_target, None, dtype="bf16", max_context=64, max_new_tokens=20),
                   tokenizer=None)
    result = engine.generate(PROMPTS[:2], ignore_eos=True)
    for prompt, out in zip(PROMPTS[:2], result.outputs):
        assert out.token_ids == plain.generate([prompt], ignore_eos=True).outputs[0].token_ids
    assert sum(result.stats.accepted_histogram[1:]) > 0


def test_batch_rows_with_and_without_matches_equal_plain(tiny_pair, monkeypatch):
    """Batch 4, rows of different lengths; the lookup is replaced by one that, per row and step,
    proposes nothing, the right continuation, a wrong one, or a partly right one of varying length,
    so every mix of proposal counts and acceptances in one verify is exercised."""
    max_new = 20
    plain = Engine(make_test_plan(tiny_pair[0], None, max_context=64, max_new_tokens=max_new + 8), tokenizer=None)
    truth = [plain.generate([p], ignore_eos=True).outputs[0].token_ids for p in PROMPTS]
    calls = {"n": 0}
    real_propose = ngram_module.propose

    def scripted(tokens, k, *args, **kwargs):
        calls["n"] += 1
        row = next(b for b, p in enumerate(PROMPTS) if tokens[: len(p)] == p)
        done = len(tokens) - len(PROMPTS[row])
        right = truth[row][done : done + k]
        kind = (calls["n"] + row) % 4
        if kind == 0:
            return []
        if kind == 1:
            return right[: 1 + calls["n"] % k]
        if kind == 2:
            return [(t + 1) % 256 for t in right]
        return right[:1] + [(t + 3) % 256 for t in right[1:]] if calls["n"] % 3 else real_propose(tokens, k)

    monkeypatch.setattr(ngram_module, "propose", scripted)
    engine = ngram_engine(tiny_pair[0], 3, batch_size=4, max_context=64, max_new_tokens=max_new)
    result = engine.generate(PROMPTS, ignore_eos=True)
    for prompt, out, want in zip(PROMPTS, result.outputs, truth):
        assert out.token_ids == want[:max_new], prompt
    hist = result.stats.accepted_histogram
    assert len(hist) == 4 and hist[0] > 0 and sum(hist[1:]) > 0
    assert sum(hist) <= result.stats.steps * 4


def test_batch_four_equals_batch_one(tiny_pair):
    """The real lookup at batch 4 (rows of different lengths, repetitive and not) gives each row's
    batch-1 output (fp32: see test_engine.test_fp32_batch_rows_equal_batch_one)."""
    batched = ngram_engine(tiny_pair[0], 4, batch_size=4, max_context=96, max_new_tokens=40)
    single = ngram_engine(tiny_pair[0], 4, batch_size=1, max_context=96, max_new_tokens=40)
    plain = Engine(make_test_plan(tiny_pair[0], None, max_context=96, max_new_tokens=40), tokenizer=None)
    result = batched.generate(PROMPTS, ignore_eos=True)
    for prompt, row in zip(PROMPTS, result.outputs):
        assert row.token_ids == single.generate([prompt], ignore_eos=True).outputs[0].token_ids
        assert row.token_ids == plain.generate([prompt], ignore_eos=True).outputs[0].token_ids
    stats = result.stats.as_dict()
    assert stats["tokens_per_step"] > 1 and 0 < stats["acceptance_rate"] <= 1


# ----------------------------------------------------------------------------- sampling


def test_accept_proposals_is_lossless_per_position():
    """Deterministic proposals: the first token is distributed as p_1, the second (given the first) as
    p_2, whether the proposal is likely, unlikely or padding."""
    V, N = 8, 40000
    gen = torch.Generator().manual_seed(0)
    p1 = torch.softmax(torch.randn(V, generator=gen), 0)
    p2 = torch.softmax(torch.randn(V, generator=gen), 0)
    sampler = Sampler("sample", 1.0, seed=3)
    for drafts, count in (([int(p1.argmax()), int(p2.argmin())], 2), ([int(p1.argmin()), 0], 1), ([0, 0], 0)):
        logits = torch.stack([p1.log(), p2.log(), p2.log()]).expand(N, 3, V).clone()
        d = torch.tensor([drafts] * N)
        accepted, bonus = sampler.accept_proposals(d, torch.full((N,), count), logits)
        tokens = torch.cat([d, bonus[:, None]], 1).scatter_(1, accepted[:, None], bonus[:, None])
        first = tokens[:, 0].numpy()
        assert _chi2_pvalue(np.bincount(first, minlength=V), p1.double()) > 1e-3
        second = tokens[accepted >= 1, 1].numpy()  # rows that went on after d_1
        if second.size > 1000:
            assert _chi2_pvalue(np.bincount(second, minlength=V), p2.double()) > 1e-3
        assert (accepted <= count).all()


def _ngram_samples(target, N, prompt, T):
    engine = ngram_engine(target, 3, batch_size=N, max_context=10, max_new_tokens=4, sampling="sample",
                          temperature=T, seed=1)
    result = engine.generate([prompt] * N)
    return np.array([o.token_ids for o in result.outputs]), result.stats


def test_ngram_sampling_is_lossless(tiny_vocab_pair, monkeypatch):
    """End to end (as test_engine.test_speculative_sampling_is_lossless): x1 .. x4 and (x1, x2). Single
    tokens are looked up too, for more proposals in a 16-token vocabulary."""
    import functools

    monkeypatch.setattr(ngram_module, "propose", functools.partial(propose, min_n=1))
    V, T, N, prompt = 16, 0.8, 3000, [1, 2, 1, 2, 1]
    marginals, joint12 = _exact_marginals(tiny_vocab_pair[0], prompt, V, T)
    samples, stats = _ngram_samples(tiny_vocab_pair[0], N, prompt, T)
    assert sum(stats.accepted_histogram[1:]) > 50 and stats.accepted_histogram[0] > 1000  # both paths
    pvalues = [_chi2_pvalue(np.bincount(samples[:, j], minlength=V), marginals[j]) for j in range(4)]
    pvalues.append(_chi2_pvalue(np.bincount(samples[:, 0] * V + samples[:, 1], minlength=V * V), joint12))
    assert min(pvalues) > 1e-3, pvalues

    # the test has power: keeping every proposal (not lossless) fails it
    def accept_all(self, drafts, counts, target_logits):
        self.to_probs_(target_logits)
        probs = target_logits[torch.arange(len(counts)), counts].float()
        return counts, torch.multinomial(probs, 1, generator=self.generator).squeeze(1)

    monkeypatch.setattr(Sampler, "accept_proposals", accept_all)
    broken, _ = _ngram_samples(tiny_vocab_pair[0], N, prompt, T)
    assert min(_chi2_pvalue(np.bincount(broken[:, j], minlength=V), marginals[j]) for j in (1, 2)) < 1e-6


# ----------------------------------------------------------------------------- refusals


def test_trees_refused_for_draft_models(tiny_pair):
    import dataclasses

    plan = make_test_plan(*tiny_pair, draft_length=4)
    tree = dataclasses.replace(plan, knobs=dataclasses.replace(plan.knobs, tree_topk=2, tree_depth=2))
    with pytest.raises(SpecMemoError, match=r"^knobs\.tree_topk: the engine verifies token trees for eagle, ngram drafting, "
                                            r"not draft-model"):
        check_supported(tree)


# ----------------------------------------------------------------------------- SmolLM2, where installed


@needs_smollm2
def test_smollm2_ngram_greedy_equals_generate():
    from engine.loading import load_model, load_tokenizer

    ref = "bundled:smollm2-135m-instruct"
    target, tokenizer = load_model(ref, "fp32"), load_tokenizer(ref)
    engine = Engine(ngram_plan(ref, 3, batch_size=2, max_context=160, max_new_tokens=24), target=target,
                    tokenizer=tokenizer)
    prompts = [engine.encode("Repeat exactly: red, green, blue, red, green, blue, red, green, blue"),
               engine.encode("What is the capital of France?")]
    result = engine.generate(prompts)
    for ids, out in zip(prompts, result.outputs):
        assert out.token_ids == hf_greedy(target.model, ids, 24)
    assert sum(result.stats.accepted_histogram[1:]) > 0
