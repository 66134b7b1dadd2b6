"""EAGLE-style head drafting in the engine (issue 17 item 2), on tiny models (CPU, offline).

What must hold: the head's static memory (weights, its KV, the hidden-state buffer, d2t) equals the
plan to the byte; greedy output equals the target's plain greedy decoding, batch 1 and batch 4 with rows
of different lengths, with a full-vocabulary head (the target's output layer) and a trimmed one (its own
lm_head, ids mapped back by d2t); lossless sampling (chi-square); the planner reads the head as EAGLE.

The heads are built, not trained: on the cycle target (t -> its successor in a cycle of 4, see
test_engine_ngram.save_cycle_model) a head whose fc passes the token's embedding through and whose layer
adds little predicts the successor of the token it reads, so its drafts are accepted often.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from engine.eagle import EagleHead
from engine.runtime import Engine
from specmemo_plan.drafting.heads import head_shape
from specmemo_plan.drafting.methods import recognise
from specmemo_plan.models import load_shape

from conftest import TINY_CONFIG, make_test_plan
from test_engine import _chi2_pvalue, _exact_marginals
from test_engine_ngram import PROMPTS, REPETITIVE, save_cycle_model

pytestmark = pytest.mark.usefixtures("one_thread")

H = TINY_CONFIG["hidden_size"]


def head_config(vocab: int = TINY_CONFIG["vocab_size"], draft_vocab: int | None = None) -> dict:
    cfg = {"architectures": ["EagleLlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
           "intermediate_size": TINY_CONFIG["intermediate_size"], "num_hidden_layers": 1,
           "num_attention_heads": TINY_CONFIG["num_attention_heads"],
           "num_key_value_heads": TINY_CONFIG["num_key_value_heads"], "vocab_size": vocab, "bias": False,
           "max_position_embeddings": 512, "rms_norm_eps": 1e-6}
    if draft_vocab is not None:
        cfg["draft_vocab_size"] = draft_vocab
    return cfg


def save_head(folder, target_folder: str, draft_vocab: int | None = None, copy_token: bool = True, seed: int = 0):
    """A head for the tiny target: random, or (copy_token) fc = [I, 0] and a layer scaled down, so its
    feature is about the embedding of the token it reads. Trimmed: the V_d lowest ids, lm_head = those
    rows of the target's output layer."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    cfg = head_config(draft_vocab=draft_vocab)
    torch.manual_seed(seed)
    head = EagleHead(cfg)
    target = AutoModelForCausalLM.from_pretrained(target_folder, dtype=torch.float32)
    with torch.no_grad():
        if copy_token:
            head.fc.weight.zero_()
            head.fc.weight[:, :H] = torch.eye(H)
            layer = head.layers[0]
            layer.self_attn.o_proj.weight.mul_(0.03)
            layer.mlp.down_proj.weight.mul_(0.03)
        state = {k: v.contiguous() for k, v in head.state_dict().items()}
        if draft_vocab is not None:
            state["lm_head.weight"] = target.lm_head.weight[:draft_vocab].clone()
            state["d2t"] = torch.arange(draft_vocab)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def eagle_plan(target: str, head: str, k: int = 3, **kwargs):
    from specmemo_plan.plan import make_plan

    base = make_test_plan(target, None, **kwargs)
    knobs = dataclasses.replace(base.knobs, draft_method="eagle", draft_length=k)
    t_shape = load_shape(target)
    return make_plan(target, t_shape, head, head_shape("eagle", head, t_shape), knobs, base.device,
                     base.budget_bytes, generation=base.generation)


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    root = tmp_path_factory.mktemp("eagle_cycle")
    target = save_cycle_model(root / "target", 0.1)
    return {"target": target, "full": save_head(root / "full", target),
            "trimmed": save_head(root / "trimmed", target, draft_vocab=128),
            "random": save_head(root / "random", target, copy_token=False)}


def plain_outputs(target: str, prompts, max_new: int):
    plain = Engine(make_test_plan(target, None, max_context=64, max_new_tokens=max_new), tokenizer=None)
    return [plain.generate([p], ignore_eos=True).outputs[0].token_ids for p in prompts]


# ----------------------------------------------------------------------------- planner


def test_planner_reads_the_head_as_eagle_with_its_trimmed_vocabulary(cycle):
    cfg = json.loads((__import__("pathlib").Path(cycle["trimmed"]) / "config.json").read_text())
    assert recognise(cfg) == "eagle"  # architectures first, though draft_vocab_size is there
    t = load_shape(cycle["target"])
    full, trimmed = head_shape("eagle", cycle["full"], t), head_shape("eagle", cycle["trimmed"], t)
    heads, kv, d, mlp = 4, 2, 16, TINY_CONFIG["intermediate_size"]
    layer = H * (heads + 2 * kv) * d + heads * d * H + 3 * H * mlp + H  # q, k, v, o; gate, up, down; one norm
    assert full.num_params == 2 * H * H + layer and full.vocab_size == 256
    assert trimmed.num_params == full.num_params + 128 * H and trimmed.vocab_size == 128


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("which,dtype,batch,k", [("full", "fp32", 1, 3), ("trimmed", "fp32", 4, 4),
                                                 ("trimmed", "bf16", 2, 2)])
def test_static_memory_equals_plan_to_the_byte(cycle, which, dtype, batch, k):
    engine = Engine(eagle_plan(cycle["target"], cycle[which], k, dtype=dtype, batch_size=batch, max_context=48),
                    tokenizer=None)
    predicted = engine.plan.prediction.memory["components"]
    measured = engine.static_bytes()
    for name in ("target_weights", "draft_weights", "target_kv", "draft_kv", "candidate_buffers"):
        assert measured[name] == predicted[name], name
    assert measured["draft_weights"] > 0 and measured["draft_kv"] > 0
    assert engine.buffers.draft_hidden_states.shape == (batch, k + 1, H)
    assert ("draft_d2t" in engine.buffers.tensors) == (which == "trimmed")


# ----------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("which", ["full", "trimmed", "random"])
def test_greedy_equals_plain_batch_one(cycle, which):
    max_new = 24
    engine = Engine(eagle_plan(cycle["target"], cycle[which], 3, max_context=64, max_new_tokens=max_new),
                    tokenizer=None)
    truth = plain_outputs(cycle["target"], PROMPTS, max_new)
    accepted = 0
    for prompt, want in zip(PROMPTS, truth):
        result = engine.generate([prompt], ignore_eos=True)
        assert result.outputs[0].token_ids == want, prompt
        accepted += sum(result.stats.accepted_histogram[1:])
    if which != "random":
        assert accepted > 0  # the built head's drafts are accepted: multi-pair catch-ups are exercised


@pytest.mark.parametrize("which,k", [("full", 4), ("trimmed", 2)])
def test_greedy_batch_four_rows_of_different_lengths(cycle, which, k):
    max_new = 20
    engine = Engine(eagle_plan(cycle["target"], cycle[which], k, batch_size=4, max_context=64,
                               max_new_tokens=max_new), tokenizer=None)
    result = engine.generate(PROMPTS, ignore_eos=True)
    for prompt, out, want in zip(PROMPTS, result.outputs, plain_outputs(cycle["target"], PROMPTS, max_new)):
        assert out.token_ids == want, prompt
    hist = result.stats.accepted_histogram
    assert hist[0] > 0 and sum(hist[1:]) > 0  # rows accept different counts in one step


def test_prefill_in_chunks_and_continued_sequence(cycle):
    """A prompt longer than the prefill chunk (the head is fed chunk by chunk), and a second call that
    reuses the cached prefix: both equal plain decoding."""
    prompt = REPETITIVE + list(range(40, 60))
    engine = Engine(eagle_plan(cycle["target"], cycle["full"], 3, max_context=96, max_new_tokens=16,
                               prefill_chunk=8), tokenizer=None)
    plain = Engine(make_test_plan(cycle["target"], None, max_context=96, max_new_tokens=16), tokenizer=None)
    owner = object()
    first = engine.continue_sequence(prompt, 16, owner)
    assert first.outputs[0].token_ids == plain.generate([prompt]).outputs[0].token_ids
    longer = prompt + first.outputs[0].token_ids + [7, 8, 9]
    second = engine.continue_sequence(longer, 16, owner)
    assert second.reused[0] > len(prompt)  # the head and the target restart where both still hold the prefix
    assert second.outputs[0].token_ids == plain.generate([longer]).outputs[0].token_ids


# ----------------------------------------------------------------------------- sampling


def test_sampling_is_lossless_chi_square(tiny_vocab_pair, tmp_path):
    """x1 (prefill), x2 .. x4 (accepted drafts, residual resamples, bonus tokens) and the pair (x1, x2)
    follow the target's exact distribution, with a trimmed random head whose vocabulary misses tokens
    the target samples (q = 0 there: the residual keeps p)."""
    from safetensors.torch import save_file

    V, T, N, prompt = 16, 0.8, 3000, [1, 2, 3]
    cfg = head_config(vocab=V, draft_vocab=10)
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in EagleHead(cfg).state_dict().items()}
    state["d2t"] = torch.arange(3, 13)  # tokens 0-2 and 13-15 are never drafted
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    plan = eagle_plan(tiny_vocab_pair[0], str(tmp_path), 3, batch_size=N, max_context=8, max_new_tokens=4,
                      sampling="sample", temperature=T, seed=1)
    result = Engine(plan, tokenizer=None).generate([prompt] * N)
    samples = np.array([o.token_ids for o in result.outputs])
    assert 0.05 < result.stats.as_dict()["acceptance_rate"] < 0.9  # both accept and residual paths exercised
    marginals, joint12 = _exact_marginals(tiny_vocab_pair[0], prompt, V, T)
    pvalues = [_chi2_pvalue(np.bincount(samples[:, j], minlength=V), marginals[j]) for j in range(4)]
    pvalues.append(_chi2_pvalue(np.bincount(samples[:, 0] * V + samples[:, 1], minlength=V * V), joint12))
    assert min(pvalues) > 1e-3, pvalues


# ----------------------------------------------------------------------------- trees


def eagle_tree_plan(target: str, head: str, depth: int, topk: int, tokens: int, **kwargs):
    plan = eagle_plan(target, head, tokens, **kwargs)
    from specmemo_plan.plan import make_plan

    knobs = dataclasses.replace(plan.knobs, tree_depth=depth, tree_topk=topk)
    t_shape = load_shape(target)
    return make_plan(target, t_shape, head, head_shape("eagle", head, t_shape), knobs, plan.device,
                     plan.budget_bytes, generation=plan.generation)


@pytest.mark.parametrize("which,depth,topk,tokens,batch", [("full", 3, 2, 5, 1), ("trimmed", 3, 3, 8, 4),
                                                           ("random", 2, 4, 6, 4), ("full", 4, 2, 8, 4)])
def test_tree_greedy_equals_plain(cycle, which, depth, topk, tokens, batch):
    max_new = 20
    plan = eagle_tree_plan(cycle["target"], cycle[which], depth, topk, tokens, batch_size=batch, max_context=64,
                           max_new_tokens=max_new)
    engine = Engine(plan, tokenizer=None)
    assert engine.tree is not None and engine.static_bytes()["candidate_buffers"] == \
        plan.prediction.memory["components"]["candidate_buffers"]
    prompts = PROMPTS[:batch]
    result = engine.generate(prompts, ignore_eos=True)
    for prompt, out, want in zip(prompts, result.outputs, plain_outputs(cycle["target"], prompts, max_new)):
        assert out.token_ids == want, prompt
    hist = result.stats.accepted_histogram
    assert len(hist) == depth + 1
    if which != "random":
        assert sum(hist[1:]) > 0


def test_tree_accepts_more_than_its_chain(cycle):
    """The same head and depth: a tree of top-k 3 accepts at least what the chain accepts, per step."""
    chain = Engine(eagle_plan(cycle["target"], cycle["trimmed"], 3, max_context=64, max_new_tokens=24), tokenizer=None)
    tree = Engine(eagle_tree_plan(cycle["target"], cycle["trimmed"], 3, 3, 9, max_context=64, max_new_tokens=24),
                  tokenizer=None)
    per_step = []
    for engine in (chain, tree):
        stats = [engine.generate([p], ignore_eos=True).stats for p in PROMPTS]
        per_step.append(sum(s.new_tokens for s in stats) / sum(s.steps for s in stats))
    assert per_step[1] >= per_step[0]


def test_tree_sampling_is_lossless_chi_square(tiny_vocab_pair, tmp_path):
    """Recursive rejection sampling over the head's tree (engine/tree.py): x1 .. x4 and (x1, x2) follow the
    target's exact distribution."""
    from safetensors.torch import save_file

    V, T, N, prompt = 16, 0.8, 3000, [1, 2, 3]
    cfg = head_config(vocab=V)
    torch.manual_seed(2)
    save_file({k: v.contiguous() for k, v in EagleHead(cfg).state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    plan = eagle_tree_plan(tiny_vocab_pair[0], str(tmp_path), 2, 3, 5, batch_size=N, max_context=12,
                           max_new_tokens=4, sampling="sample", temperature=T, seed=3)
    result = Engine(plan, tokenizer=None).generate([prompt] * N)
    samples = np.array([o.token_ids for o in result.outputs])
    assert sum(result.stats.accepted_histogram[1:]) > 0
    marginals, joint12 = _exact_marginals(tiny_vocab_pair[0], prompt, V, T)
    pvalues = [_chi2_pvalue(np.bincount(samples[:, j], minlength=V), marginals[j]) for j in range(4)]
    pvalues.append(_chi2_pvalue(np.bincount(samples[:, 0] * V + samples[:, 1], minlength=V * V), joint12))
    assert min(pvalues) > 1e-3, pvalues


def test_tree_that_outgrows_the_head_slots_is_refused(cycle):
    from engine.checks import check_supported
    from specmemo_plan.errors import SpecMemoError

    plan = eagle_tree_plan(cycle["target"], cycle["full"], 5, 4, 8, max_context=64)
    with pytest.raises(SpecMemoError, match=r"^knobs\.tree_topk: an EAGLE tree of depth 5 and top-k 4 writes 16"):
        check_supported(plan)
