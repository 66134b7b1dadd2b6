"""The speculative-decoding runtime on tiny random pairs (CPU, fp32, offline).

What must hold (issue #3): static memory equal to the plan to the byte; logits only where used;
greedy output equal to transformers' generate of the target alone; lossless sampling (chi-square);
batches whose rows accept different counts; chat sessions reusing KV with a context policy;
refusals naming the plan field; measured memory beside the prediction; the CLI.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from engine import runtime as runtime_module
from engine.results import Stats
from engine.runtime import Engine
from engine.speculative import Sampler
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.memory import candidate_buffer_specs, kv_slots
from specmemo_plan.plan import read_plan, write_plan

from conftest import TINY_CONFIG
from conftest import make_test_plan

PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], list(range(20, 40)), [3], [100, 7, 42, 42, 9, 200, 17]]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hf_target(tiny_pair):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_pair[0], dtype=torch.float32).eval()


def hf_greedy(model, prompt: list[int], max_new: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new)
    return out[0, len(prompt):].tolist()


def engine_for(pair, **plan_kwargs) -> Engine:
    target, draft = pair
    return Engine(make_test_plan(target, draft, **plan_kwargs), tokenizer=None)


# ----------------------------------------------------------------------------- static memory


@pytest.mark.parametrize("dtype,batch,k", [("fp32", 1, 3), ("fp32", 3, 5), ("fp16", 2, 2)])
def test_static_memory_equals_plan_to_the_byte(tiny_pair, dtype, batch, k):
    engine = engine_for(tiny_pair, dtype=dtype, batch_size=batch, draft_length=k, max_context=48)
    predicted = engine.plan.prediction.memory["components"]
    measured = engine.static_bytes()
    for name in ("target_weights", "draft_weights", "target_kv", "draft_kv", "candidate_buffers"):
        assert measured[name] == predicted[name], name
    report = engine.memory_report()["measured"]
    assert all(report["error_percent"][name] == 0.0 for name in measured)


def test_caches_have_plan_slots_and_never_grow(tiny_pair):
    engine = engine_for(tiny_pair, batch_size=2, draft_length=4, max_context=40, max_new_tokens=20)
    shape = engine.target_cache.shape
    slots = kv_slots(shape, 40, 4)
    assert slots == 44
    tensors = engine.target_cache.tensors() + engine.draft_cache.tensors() + list(engine.buffers.tensors.values())
    for t in engine.target_cache.tensors():
        assert tuple(t.shape) == (2, shape.num_kv_heads, slots, shape.head_dim)
    before = [(t.data_ptr(), tuple(t.shape)) for t in tensors]
    engine.generate([PROMPTS[0], PROMPTS[2]], max_new_tokens=20)
    assert [(t.data_ptr(), tuple(t.shape)) for t in tensors] == before
    specs = candidate_buffer_specs(shape, engine.draft_cache.shape, engine.plan.knobs)
    assert {s.name: s.shape for s in specs} == {n: tuple(t.shape) for n, t in engine.buffers.tensors.items()}


# ----------------------------------------------------------------------------- logits only where used


def test_logits_only_at_used_positions(tiny_pair, monkeypatch, hf_target):
    engine = engine_for(tiny_pair, batch_size=2, draft_length=3, max_context=64, prefill_chunk=8)
    V = TINY_CONFIG["vocab_size"]
    shapes = []
    original = type(engine.target).logits

    def recording(self, hidden, out):
        shapes.append((self is engine.target, tuple(hidden.shape[:-1])))
        assert out.shape[-1] == V and tuple(out.shape[:-1]) == tuple(hidden.shape[:-1])
        return original(self, hidden, out)

    monkeypatch.setattr(type(engine.target), "logits", recording)
    # the models' own output layers never run: no [B, n, V] logits for a prompt
    for model in (engine.target_model.model, engine.draft_model.model):
        monkeypatch.setattr(model.lm_head, "forward", lambda *a, **k: pytest.fail("full logits computed"))
    prompts = [list(range(10, 40)), [4, 5, 6]]  # 30 tokens: four prefill chunks of 8
    result = engine.generate(prompts, max_new_tokens=6)
    target_shapes = [s for is_target, s in shapes if is_target]
    assert target_shapes[:2] == [(), ()]  # prefill: one position per row
    assert set(target_shapes[2:]) == {(2, 4)}  # verify: k + 1 positions
    assert all(s == (2,) for is_target, s in shapes if not is_target)  # draft: one position per proposal
    for prompt, out in zip(prompts, result.outputs):
        assert out.token_ids == hf_greedy(hf_target, prompt, 6)


# ----------------------------------------------------------------------------- greedy equivalence


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_equals_transformers_generate(tiny_pair, hf_target, k):
    engine = engine_for(tiny_pair, draft_length=k, max_context=64, max_new_tokens=24)
    stats = Stats(k)
    for prompt in PROMPTS:
        result = engine.generate([prompt])
        assert result.outputs[0].token_ids == hf_greedy(hf_target, prompt, 24), prompt
        stats.merge(result.stats)
    assert 0.2 < stats.as_dict()["acceptance_rate"] < 1.0  # rejections happen, so the accept path is tested


def test_chunked_prefill_gives_the_same_tokens(tiny_pair, hf_target):
    prompt = list(range(30, 75))
    for chunk in (4, 7, 64):
        engine = engine_for(tiny_pair, draft_length=3, max_context=80, prefill_chunk=chunk)
        assert engine.generate([prompt], max_new_tokens=12).outputs[0].token_ids == hf_greedy(hf_target, prompt, 12)


def test_plain_plan_without_draft(tiny_pair, hf_target):
    engine = engine_for((tiny_pair[0], None), max_context=64, batch_size=2)
    assert engine.draft is None and engine.static_bytes()["draft_kv"] == 0
    result = engine.generate([PROMPTS[0], PROMPTS[4]], max_new_tokens=16)
    assert result.outputs[0].token_ids == hf_greedy(hf_target, PROMPTS[0], 16)
    assert result.outputs[1].token_ids == hf_greedy(hf_target, PROMPTS[4], 16)


def test_draft_equal_to_target_accepts_everything(tiny_pair):
    """Every step accepts all k: the draft's two-token catch-up keeps its cache exact, else its
    proposals would drift from the target's."""
    engine = engine_for((tiny_pair[0], tiny_pair[0]), draft_length=4, max_context=64, batch_size=2)
    result = engine.generate([PROMPTS[2], PROMPTS[4]], max_new_tokens=21, ignore_eos=True)
    stats = result.stats.as_dict()
    assert stats["acceptance_rate"] == 1.0 and stats["accepted_histogram"]["4"] == 8


def test_eos_stops_a_row(tiny_pair, hf_target):
    engine = engine_for(tiny_pair, draft_length=3, max_context=96, max_new_tokens=64, batch_size=len(PROMPTS))
    result = engine.generate(PROMPTS)
    stopped = [o for o in result.outputs if o.stop_reason == "eos"]
    assert stopped, "pick prompts where the tiny model emits its EOS"
    for out in stopped:
        assert out.token_ids[-1] == TINY_CONFIG["eos_token_id"]
        assert TINY_CONFIG["eos_token_id"] not in out.token_ids[:-1]
    ignored = engine.generate(PROMPTS, ignore_eos=True)
    assert all(len(o.token_ids) == 64 for o in ignored.outputs)


# ----------------------------------------------------------------------------- batches


def test_batch_rows_accept_different_counts_and_match_batch_one(tiny_pair, hf_target, monkeypatch):
    per_step = []
    original = runtime_module.speculative_step

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        per_step.append(out.accepted.tolist())
        return out

    monkeypatch.setattr(runtime_module, "speculative_step", recording)
    engine = engine_for(tiny_pair, batch_size=len(PROMPTS), draft_length=4, max_context=64, max_new_tokens=24)
    batched = engine.generate(PROMPTS)
    assert any(len(set(step)) > 1 for step in per_step), "rows should accept different counts in a step"
    utilisation = batched.stats.as_dict()["row_utilisation"]
    assert utilisation == sum(batched.stats.accepted_histogram) / (batched.stats.steps * len(PROMPTS)) <= 1
    single = engine_for(tiny_pair, batch_size=1, draft_length=4, max_context=64, max_new_tokens=24)
    for prompt, out in zip(PROMPTS, batched.outputs):
        assert out.token_ids == single.generate([prompt]).outputs[0].token_ids
        assert out.token_ids == hf_greedy(hf_target, prompt, 24)
    # a smaller batch than the plan's uses the first rows of the same caches
    assert engine.generate(PROMPTS[:2]).outputs[1].token_ids == batched.outputs[1].token_ids


@pytest.mark.parametrize("k", [0, 2])
def test_fp32_batch_rows_equal_batch_one(tiny_pair, k):
    """The README's claim, as it holds: in fp32 each row of a batch equals its batch-1 output token for
    token (plain decoding and speculative). Batching reorders floating-point sums (a row beside a longer
    one reads more, masked, cache slots; matrix kernels block by row count): in fp32 that moves logits by
    ~1e-6 relative, below the gaps greedy decoding meets here; in bf16/fp16 by one rounding step of the
    format, which flips near-ties (a bf16 batch-4 row can leave its batch-1 output after a few tokens)."""
    pair = tiny_pair if k else (tiny_pair[0], None)
    batched = engine_for(pair, batch_size=len(PROMPTS), draft_length=k, max_context=96, max_new_tokens=48)
    single = engine_for(pair, batch_size=1, draft_length=k, max_context=96, max_new_tokens=48)
    rows = batched.generate(PROMPTS, ignore_eos=True).outputs
    for prompt, row in zip(PROMPTS, rows):
        assert row.token_ids == single.generate([prompt], ignore_eos=True).outputs[0].token_ids


# ----------------------------------------------------------------------------- lossless sampling


def _exact_marginals(model_dir, prompt, V, T):
    """P(x_j) for j = 1..4 and P(x1, x2) under the target alone, by enumerating 16^3 prefixes."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seqs = torch.tensor([prompt + list(s) for s in itertools.product(range(V), repeat=3)])
    with torch.no_grad():
        probs = torch.softmax(model(seqs).logits.double() / T, -1)
    n = len(prompt)
    p1 = probs[0, n - 1]
    p2 = probs[:, n].reshape(V, V, V, V)[:, 0, 0]  # [x1, x2]
    p3 = probs[:, n + 1].reshape(V, V, V, V)[:, :, 0]  # [x1, x2, x3]
    p4 = probs[:, n + 2].reshape(V, V, V, V)  # [x1, x2, x3, x4]
    j12 = p1[:, None] * p2
    j123 = j12[:, :, None] * p3
    return [p1, j12.sum(0), j123.sum((0, 1)), (j123[..., None] * p4).sum((0, 1, 2))], j12.flatten()


def _chi2_pvalue(counts, probs):
    expected = probs.numpy() / probs.numpy().sum() * counts.sum()
    keep = expected >= 5  # pool rare cells so the chi-square approximation holds
    observed, expect = counts[keep], expected[keep]
    if not keep.all():
        observed, expect = np.append(observed, counts[~keep].sum()), np.append(expect, expected[~keep].sum())
    return chisquare(observed, expect).pvalue


def _sample_counts(pair, n_rows, prompt, temperature, seed=1):
    engine = engine_for(pair, batch_size=n_rows, max_context=8, draft_length=3, max_new_tokens=4,
                        sampling="sample", temperature=temperature, seed=seed)
    result = engine.generate([prompt] * n_rows)
    return np.array([o.token_ids for o in result.outputs]), result.stats.as_dict()


def test_speculative_sampling_is_lossless(tiny_vocab_pair, monkeypatch):
    """Next-token frequencies of x1 (prefill), x2 .. x4 (speculative steps: accepted drafts, residual
    resamples, bonus tokens) and the pair (x1, x2) match the target's exact distribution."""
    V, T, N, prompt = 16, 0.8, 3000, [1, 2, 3]
    marginals, joint12 = _exact_marginals(tiny_vocab_pair[0], prompt, V, T)
    samples, stats = _sample_counts(tiny_vocab_pair, N, prompt, T)
    assert 0.3 < stats["acceptance_rate"] < 0.8, stats  # both accept and residual paths exercised
    pvalues = [_chi2_pvalue(np.bincount(samples[:, j], minlength=V), marginals[j]) for j in range(4)]
    pvalues.append(_chi2_pvalue(np.bincount(samples[:, 0] * V + samples[:, 1], minlength=V * V), joint12))
    assert min(pvalues) > 1e-3, pvalues

    # the test has power: a sampler that keeps every draft (not lossless) fails it
    def accept_all(self, drafts, q, target_logits):
        self.to_probs_(target_logits)
        bonus = torch.multinomial(target_logits[:, -1].float(), 1, generator=self.generator).squeeze(1)
        return torch.full((drafts.shape[0],), drafts.shape[1], dtype=torch.long), bonus

    monkeypatch.setattr(Sampler, "accept", accept_all)
    broken, _ = _sample_counts(tiny_vocab_pair, N, prompt, T)
    assert min(_chi2_pvalue(np.bincount(broken[:, j], minlength=V), marginals[j]) for j in (1, 2)) < 1e-6


# ----------------------------------------------------------------------------- chat sessions


# ----------------------------------------------------------------------------- enforcement


def test_refuses_requests_outside_the_plan(tiny_pair):
    engine = engine_for(tiny_pair, batch_size=2, max_context=32, max_new_tokens=8)
    with pytest.raises(SpecMemoError, match=r"knobs\.max_context") as err:
        engine.generate([list(range(40))])
    assert "40 tokens" in err.value.message
    with pytest.raises(SpecMemoError, match=r"knobs\.max_context"):
        engine.generate([list(range(20))], max_new_tokens=13)  # 20 + 13 > 32
    with pytest.raises(SpecMemoError, match=r"knobs\.batch_size"):
        engine.generate([[1], [2], [3]])
    engine.generate([list(range(24))], max_new_tokens=8)  # exactly the context: allowed


def test_refuses_plans_that_do_not_match(tiny_pair, tmp_path):
    target, draft = tiny_pair
    plan = make_test_plan(target, draft)
    wrong_target = dataclasses.replace(plan, target=dataclasses.replace(plan.target, fingerprint="0" * 16))
    with pytest.raises(SpecMemoError, match=r"target\.fingerprint"):
        Engine(wrong_target)
    wrong_draft = dataclasses.replace(plan, draft=dataclasses.replace(plan.draft, fingerprint="1" * 16))
    with pytest.raises(SpecMemoError, match=r"draft\.fingerprint"):
        Engine(wrong_draft)
    cuda_plan = dataclasses.replace(plan, device=dataclasses.replace(plan.device, kind="cuda", name="NVIDIA H100"))
    if not torch.cuda.is_available():
        with pytest.raises(SpecMemoError, match=r"device\.kind"):
            Engine(cuda_plan)
    with pytest.raises(SpecMemoError, match=r"device\.count"):
        Engine(dataclasses.replace(plan, device=dataclasses.replace(plan.device, count=2)))
    memory = json.loads(json.dumps(plan.prediction.memory))
    memory["components"]["target_kv"] += 1
    stale = dataclasses.replace(plan, prediction=dataclasses.replace(plan.prediction, memory=memory))
    with pytest.raises(SpecMemoError, match=r"prediction\.memory\.components\.target_kv"):
        Engine(stale)
    int8 = make_test_plan(target, draft, dtype="int8")
    with pytest.raises(SpecMemoError, match=r"knobs\.weight_dtype"):
        Engine(int8)
    # schema: read_plan names the field
    path = tmp_path / "plan.json"
    write_plan(plan, path)
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(SpecMemoError, match="schema_version"):
        Engine(str(path))


def test_sliding_window_shorter_than_the_context_runs(tmp_path):
    """No window check any more: engine.cache keeps window layers as ring buffers, so a context past the
    window runs, and greedy output is the model's own generate."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = {k: v for k, v in TINY_CONFIG.items() if k != "model_type"}
    model = MistralForCausalLM(MistralConfig(**config, sliding_window=16)).eval()
    model.save_pretrained(tmp_path / "m")
    engine = Engine(make_test_plan(str(tmp_path / "m"), None, max_context=64, max_new_tokens=40), tokenizer=None)
    prompt = list(range(30, 42))
    assert engine.generate([prompt], ignore_eos=True).outputs[0].token_ids == hf_greedy(model, prompt, 40)


# ----------------------------------------------------------------------------- measured memory


def test_memory_report_beside_prediction(tiny_pair):
    engine = engine_for(tiny_pair, batch_size=2, draft_length=3, max_context=64)
    engine.generate([PROMPTS[0], PROMPTS[2]], max_new_tokens=16)
    report = engine.memory_report()
    predicted, measured = report["predicted"], report["measured"]
    assert set(predicted["components"]) <= set(measured["components"])
    assert measured["source"].startswith("cpu")
    assert set(measured["phases"]) == {"prefill", "decode"}
    for phase in measured["phases"].values():
        assert phase["peak_rss_bytes"] >= phase["start_rss_bytes"] > 0
    assert measured["components"]["activations"] is not None
    assert measured["error_percent"]["activations"] is not None
    assert measured["total_bytes"] == sum(v for v in measured["components"].values() if v is not None)


def test_device_probes_fail_cleanly(capsys):
    from engine import memory_probe

    assert memory_probe._amdsmi_used(0) is None or isinstance(memory_probe._amdsmi_used(0), dict)
    if not torch.cuda.is_available():
        assert memory_probe._nvml_used(0) is None or isinstance(memory_probe._nvml_used(0), dict)
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- random weights, CLI


