"""The engine on tiny random-weight versions of the families of issue 14 (CPU, fp32, offline).

For each of Qwen3, Gemma-3 text (hybrid sliding/full layers, a context longer than the window),
Phi-3 (every layer windowed), Mixtral (mixture of experts) and DeepSeek-V2 (multi-head latent
attention): greedy speculative decoding and plain decoding through the Engine give the token ids of
transformers' `generate`, and the static memory the engine holds is the plan's to the byte. The
ring buffers of window layers are checked directly: slots per layer, prefill chunks that wrap the
ring, rows of different lengths, and when cached positions may be reused. Eleven more families
(MORE_FAMILIES: eager attention with softcaps or sinks, MLA with a query LoRA, no-RoPE layers,
multi-query GPT-BigCode, ...) run the same way once each.
"""

from __future__ import annotations

import pytest
import torch

from engine.cache import StaticKVCache
from engine.forward import Decoder
from engine.runtime import Engine
from specmemo_plan.memory import kv_layer_slots
from specmemo_plan.models import load_shape

from conftest import make_test_plan, save_tiny_model

COMMON = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.2,
    bos_token_id=1, eos_token_id=None, pad_token_id=0,  # no end token: every run is as long as asked
)
WINDOW = 8  # Gemma-3's local layers; the context below is 40
FAMILIES = {
    "qwen3": dict(model_type="qwen3", head_dim=16),
    # layers local, global, local, global: the pattern of Gemma-3 (5 local : 1 global) shrunk to 1 : 1
    "gemma3_text": dict(model_type="gemma3_text", num_hidden_layers=4, head_dim=16, sliding_window=WINDOW,
                        sliding_window_pattern=2, query_pre_attn_scalar=16),
    "phi3": dict(model_type="phi3", sliding_window=12),  # every layer windowed, as Phi-3-mini-4k
    "mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    "deepseek_v2": dict(model_type="deepseek_v2", num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None,
                        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=4,
                        num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
                        first_k_dense_replace=1, n_group=1, topk_group=1),
}
# More families of issue 14, run the same way once each (a window where the family has one)
MORE_FAMILIES = {
    "qwen3_moe": dict(model_type="qwen3_moe", head_dim=16, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32),
    "gemma2": dict(model_type="gemma2", head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16),  # eager, softcaps
    "gpt_oss": dict(model_type="gpt_oss", head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW,
                    layer_types=["sliding_attention", "full_attention"]),  # eager, attention sinks
    "deepseek_v3": dict(FAMILIES["deepseek_v2"], model_type="deepseek_v3", q_lora_rank=24),
    "olmo2": dict(model_type="olmo2"),
    "granite": dict(model_type="granite", logits_scaling=4.0, embedding_multiplier=2.0, residual_multiplier=0.5,
                    attention_multiplier=0.3),
    "smollm3": dict(model_type="smollm3", no_rope_layer_interval=2),
    "starcoder2": dict(model_type="starcoder2", sliding_window=WINDOW),
    "mistral": dict(model_type="mistral", sliding_window=WINDOW),
    "qwen2": dict(model_type="qwen2", use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=512),
    "gpt_neox": dict(model_type="gpt_neox", num_key_value_heads=4),  # no grouped heads in GPT-NeoX
    "gpt_bigcode": dict(model_type="gpt_bigcode", n_embd=64, n_layer=2, n_head=4, n_positions=512, multi_query=True),
}
FAMILIES.update(MORE_FAMILIES)
STATIC = ("target_weights", "draft_weights", "target_kv", "draft_kv", "candidate_buffers")
PROMPTS = [list(range(3, 23)), [5, 9, 200, 17, 42, 42, 7, 100, 31, 64, 65, 66, 12, 250, 3, 8, 8, 90, 11]]
CONTEXT, NEW, K = 40, 18, 3

pytestmark = pytest.mark.usefixtures("one_thread")


def build(family: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(**{**COMMON, **FAMILIES[family]})
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def family_pair(tmp_path_factory, request):
    """(target folder, draft folder, target model) per family: the draft a noisy copy (some drafts rejected)."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    model = build(family)
    model.save_pretrained(root / "target")
    save_tiny_model(root / "draft", seed=1, noise_from=model, noise=0.05)
    return str(root / "target"), str(root / "draft"), model


def hf_greedy(model, prompt: list[int], max_new: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new)
    return out[0, len(prompt):].tolist()


def run(plan) -> tuple[Engine, list[list[int]]]:
    engine = Engine(plan, tokenizer=None)
    result = engine.generate(PROMPTS[:plan.knobs.batch_size], max_new_tokens=NEW)
    return engine, [o.token_ids for o in result.outputs]


ISSUE_FAMILIES = ["qwen3", "gemma3_text", "phi3", "mixtral", "deepseek_v2"]


@pytest.mark.parametrize("family_pair", ISSUE_FAMILIES, indirect=True)
@pytest.mark.parametrize("chunk", [None, 6])  # one prefill forward, or chunks of 6 (> k + 1: they wrap rings)
def test_greedy_equals_transformers_and_static_bytes_equal_plan(family_pair, chunk):
    target, draft, model = family_pair
    expected = [hf_greedy(model, p, NEW) for p in PROMPTS]
    for draft_ref in (draft, None):  # speculative, then plain decoding
        plan = make_test_plan(target, draft_ref, batch_size=1, max_context=CONTEXT, draft_length=K,
                              max_new_tokens=NEW, prefill_chunk=chunk)
        engine, outputs = run(plan)
        assert outputs == expected[:1]
        predicted = engine.predicted_memory["components"]  # recomputed by the engine from the knobs
        measured = engine.static_bytes()
        for name in STATIC:
            assert measured[name] == predicted[name] == plan.prediction.memory["components"][name], name


@pytest.mark.parametrize("family_pair", ["gemma3_text", "deepseek_v2"], indirect=True)
def test_python_m_engine(family_pair, tmp_path):
    """`python -m engine --plan plan.json` (its click command, in process): the text prompt's bytes,
    longer than Gemma's window, give transformers' greedy tokens; the memory report is exact."""
    import json

    from click.testing import CliRunner

    from engine.cli import main as cli_main
    from specmemo_plan.plan import write_plan

    target, draft, model = family_pair
    plan_file = tmp_path / "plan.json"
    write_plan(make_test_plan(target, draft, max_context=CONTEXT, draft_length=K, max_new_tokens=NEW), plan_file)
    prompt = "the quick brown fox!"  # 20 tokens of the byte tokenizer (no tokenizer in the folder)
    result = CliRunner().invoke(cli_main, ["--plan", str(plan_file), "--prompt", prompt, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["outputs"][0]["token_ids"] == hf_greedy(model, list(prompt.encode()), NEW)
    assert all(data["memory"]["measured"]["error_percent"][name] == 0.0 for name in STATIC)


@pytest.mark.parametrize("family_pair", ["gemma3_text", "phi3"], indirect=True)
def test_batch_rows_of_different_lengths(family_pair):
    """Two rows (20 and 19 prompt tokens) accept different counts; each equals its own generate."""
    target, draft, model = family_pair
    plan = make_test_plan(target, draft, batch_size=2, max_context=CONTEXT, draft_length=K, max_new_tokens=NEW)
    _, outputs = run(plan)
    assert outputs == [hf_greedy(model, p, NEW) for p in PROMPTS]


@pytest.mark.parametrize("family_pair", ["gemma3_text"], indirect=True)
def test_window_layers_are_rings_of_the_plan_slots(family_pair):
    target, draft, _ = family_pair
    plan = make_test_plan(target, draft, batch_size=2, max_context=CONTEXT, draft_length=K, max_new_tokens=NEW)
    engine = Engine(plan, tokenizer=None)
    shape = load_shape(target)
    cache = engine.target_cache
    for layer, spec, keys, values in zip(range(4), shape.cache_layers, cache.keys, cache.values):
        slots = WINDOW + K if layer % 2 == 0 else CONTEXT + K  # local layers: window + k; global: C + k
        assert slots == kv_layer_slots(spec, CONTEXT, K)
        assert tuple(keys.shape) == (2, spec.kv_heads, slots, spec.k_dim)
        assert tuple(values.shape) == (2, spec.kv_heads, slots, spec.v_dim)
    # steps use the plan's masks only; any mask the decoders allocate is a prefill chunk's
    allocated = []
    for decoder in (engine.target, engine.draft):
        original = decoder._view

        def recording(buffer, B, n, read, original=original):
            if buffer is None or buffer.shape[2] < n or buffer.shape[3] < read:
                allocated.append(n)
            return original(buffer, B, n, read)

        decoder._view = recording
    engine.generate(PROMPTS, max_new_tokens=NEW)
    assert allocated and all(n > K + 1 for n in allocated)


@pytest.mark.parametrize("family_pair", ["gemma3_text"], indirect=True)
def test_padded_rows_keep_their_window(family_pair):
    """A prefill pads short rows to the longest; window layers store only the real tokens (`real`),
    so a 5-token row beside a 30-token one still decodes as transformers does."""
    target, _, model = family_pair
    prompts = [list(range(3, 33)), [7, 8, 9, 10, 11]]
    steps = 8
    shape = load_shape(target)
    cache = StaticKVCache(shape, 2, [kv_layer_slots(layer, 40, 0) for layer in shape.cache_layers], "fp32", "cpu")
    decoder = Decoder(model, cache)
    rows = [list(p) for p in prompts]
    with torch.inference_mode():
        n = max(len(p) for p in prompts)
        ids = torch.tensor([p + [p[-1]] * (n - len(p)) for p in prompts])
        mask = torch.empty((2, 1, n, n), dtype=torch.bool)
        hidden = decoder.forward(ids, [0, 0], mask, real=[len(p) for p in prompts])
        last = torch.stack([hidden[b, len(p) - 1] for b, p in enumerate(prompts)])
        step_mask = torch.empty((2, 1, 1, 40), dtype=torch.bool)
        for _ in range(steps):
            logits = torch.empty((2, shape.vocab_size))
            new = decoder.logits(last, out=logits).argmax(-1).tolist()
            for row, token in zip(rows, new):
                row.append(token)
            hidden = decoder.forward(torch.tensor([[r[-1]] for r in rows]), [len(r) - 1 for r in rows], step_mask)
            last = hidden[:, -1]
    assert [r[len(p):] for r, p in zip(rows, prompts)] == [hf_greedy(model, p, steps) for p in prompts]


def test_ring_reuse_needs_the_window_intact():
    """Cached positions may be reused only while the ring still holds the window before them."""
    import dataclasses

    from specmemo_plan.architectures.base import CacheLayer

    shape = load_shape("llama-2-7b-chat")
    layer = CacheLayer(1, 2, 2, WINDOW)
    shape = dataclasses.replace(shape, num_layers=1, cache_layers=(layer,))
    cache = StaticKVCache(shape, 1, [WINDOW + K], "fp32", "cpu")  # a ring of 11
    cache.set_write([0], 31)  # a 31-token prefill: the ring holds positions 20 .. 30
    assert cache.reusable_start(0, 28) == 28  # window 21 .. 27 intact
    assert cache.reusable_start(0, 10) == 0  # positions 3 .. 9 were overwritten
    with pytest.raises(RuntimeError, match="overwritten"):
        cache.set_write([10], 1)
    cache.set_write([0], 5)  # from scratch: a new sequence
    assert cache.reusable_start(0, 5) == 5


@pytest.mark.parametrize("family_pair", ["gemma3_text"], indirect=True)
def test_chat_turns_reuse_the_rings(family_pair):
    """continue_sequence: each turn reuses the K/V of the last (rings included) and equals generate."""
    target, draft, model = family_pair
    plan = make_test_plan(target, draft, batch_size=1, max_context=60, draft_length=K, max_new_tokens=10)
    engine, owner = Engine(plan, tokenizer=None), object()
    ids = list(range(5, 15))
    for turn in range(3):
        result = engine.continue_sequence(ids, 10, owner)
        assert result.outputs[0].token_ids == hf_greedy(model, ids, 10)
        assert (result.reused[0] > 0) == (turn > 0)
        ids = ids + result.outputs[0].token_ids + [40 + turn, 41, 42]


# Two runtime.py changes (its owner's): until they land these raise the ring's RuntimeError, never a
# wrong token. Strict: they fail once the change is in, so the markers get removed with it.
@pytest.mark.parametrize("family_pair", ["gemma3_text"], indirect=True)
def test_a_shorter_shared_prefix_prefills_the_rings_again(family_pair):
    target, draft, model = family_pair
    plan = make_test_plan(target, draft, batch_size=1, max_context=60, draft_length=K, max_new_tokens=10)
    engine, owner = Engine(plan, tokenizer=None), object()
    first = list(range(5, 35))
    engine.continue_sequence(first, 10, owner)
    again = first[:12] + [99, 98]  # shares 12 tokens, whose window the ring no longer holds
    assert engine.continue_sequence(again, 10, owner).outputs[0].token_ids == hf_greedy(model, again, 10)


@pytest.mark.parametrize("family_pair", ["gemma3_text"], indirect=True)
def test_batch_rows_far_apart(family_pair):
    target, draft, model = family_pair
    prompts = [list(range(3, 33)), [7, 8, 9, 10, 11]]
    plan = make_test_plan(target, draft, batch_size=2, max_context=CONTEXT, draft_length=K, max_new_tokens=8)
    outputs = [o.token_ids for o in Engine(plan, tokenizer=None).generate(prompts, max_new_tokens=8).outputs]
    assert outputs == [hf_greedy(model, p, 8) for p in prompts]


# transformers keeps DeepSeek's router `gate.weight` in fp32 in a 16-bit model (_keep_in_fp32_modules_strict):
# the planner's weights (its owner's) count it at 2 bytes until it counts those at 4.


@pytest.mark.parametrize("family_pair", ["gemma3_text", "deepseek_v2"], indirect=True)
def test_bf16_static_bytes_equal_plan(family_pair):
    """Half-size weights, KV and logits: still the plan's bytes, and the rings run in the KV dtype."""
    target, draft, _ = family_pair
    plan = make_test_plan(target, draft, batch_size=2, max_context=CONTEXT, draft_length=K, max_new_tokens=NEW,
                          dtype="bf16", prefill_chunk=6)
    engine, outputs = run(plan)
    assert [len(o) for o in outputs] == [NEW, NEW]
    measured = engine.static_bytes()
    assert all(measured[name] == plan.prediction.memory["components"][name] for name in STATIC)
    assert all(t.dtype == torch.bfloat16 for t in engine.target_cache.tensors())


# transformers 5.24 saves Qwen3-MoE's expert count as `num_local_experts` (num_experts: null): the
# planner reads either.
@pytest.mark.parametrize("family_pair", MORE_FAMILIES, indirect=True)
def test_more_families(family_pair):
    """A batch of two, prefill chunks that wrap the rings, speculative and plain: transformers' tokens,
    the plan's bytes."""
    target, draft, model = family_pair
    expected = [hf_greedy(model, p, NEW) for p in PROMPTS]
    for draft_ref in (draft, None):
        plan = make_test_plan(target, draft_ref, batch_size=2, max_context=CONTEXT, draft_length=K,
                              max_new_tokens=NEW, prefill_chunk=6)
        engine, outputs = run(plan)
        assert outputs == expected
        measured = engine.static_bytes()
        assert all(measured[name] == plan.prediction.memory["components"][name] for name in STATIC)


@pytest.mark.parametrize("family_pair", ["gemma2", "granite"], indirect=True)
def test_logits_as_the_model_computes_them(family_pair):
    """Sampling needs the model's own logits, not only their argmax: Gemma-2 caps them with tanh
    (final_logit_softcapping), Granite divides them (logits_scaling)."""
    target, _, model = family_pair
    prompt = PROMPTS[0]
    shape = load_shape(target)
    cache = StaticKVCache(shape, 1, [kv_layer_slots(layer, 40, 0) for layer in shape.cache_layers], "fp32", "cpu")
    decoder = Decoder(model, cache)
    with torch.inference_mode():
        hidden = decoder.forward(torch.tensor([prompt]), [0], torch.empty((1, 1, len(prompt), len(prompt)), dtype=torch.bool))
        ours = decoder.logits(hidden[0], out=torch.empty((len(prompt), shape.vocab_size)))
        theirs = model(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
