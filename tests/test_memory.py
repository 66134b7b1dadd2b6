
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, StaticCache

from specmemo_plan.errors import SpecMemoError
from specmemo_plan.memory import (
    Knobs, breakdown, candidate_buffer_bytes, candidate_buffer_specs, kv_cache_bytes, kv_slots, kv_token_bytes,
    weight_bytes,
)
from specmemo_plan.models import load_preset_config, load_shape, shape_from_config

LLAMA7 = load_shape("llama-2-7b-chat")
DRAFT = load_shape("llama-68m")


def tiny_shape():
    # 2 layers, hidden 256, 4 heads of 64, 2 KV heads, MLP 512, vocab 1000, untied.
    cfg = dict(model_type="llama", vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False)
    return shape_from_config(cfg, "tiny", "config:tiny")


def test_weights_by_hand():
    assert weight_bytes(LLAMA7, "fp16") == 6_738_415_616 * 2
    assert weight_bytes(LLAMA7, "fp32") == 6_738_415_616 * 4
    t = tiny_shape()
    # per layer: q 256*256, k/v 128*256 each, o 256*256, MLP 3 * 256*512 = 655,360 weights; 2 norms 512
    matrices = 2 * (65536 + 2 * 32768 + 65536 + 3 * 131072)
    rest = 1000 * 256 * 2 + 2 * 512 + 256  # embedding + head, norms, final norm
    assert t.num_params == matrices + rest
    assert weight_bytes(t, "int8") == matrices + 2 * 4 * (256 + 128 + 128 + 256 + 512 + 512 + 256) + rest * 2
    # int4: half a byte per weight; per 128 inputs one fp16 scale + one fp16 zero
    groups = 2 * (256 * 2 + 128 * 2 + 128 * 2 + 256 * 2 + 512 * 2 + 512 * 2 + 256 * 4)
    assert weight_bytes(t, "int4") == matrices // 2 + groups * 4 + rest * 2
    assert weight_bytes(t, "fp8") == matrices + 2 * 7 * 4 + rest * 2


def test_kv_by_hand():
    assert kv_cache_bytes(LLAMA7, 1, 4096, 0, "fp16") == 2 * 2**30  # 512 KiB per token
    assert kv_cache_bytes(LLAMA7, 1, 4090, 6, "fp16") == 2 * 2**30  # C + k slots
    assert kv_cache_bytes(load_shape("llama-2-70b-chat"), 2, 1000, 0, "fp16") == 2 * 80 * 8 * 128 * 2 * 2 * 1000
    assert kv_cache_bytes(LLAMA7, 1, 10, 0, "fp8") == 524_288 // 2 * 10
    assert kv_slots(LLAMA7, 4096, 5) == 4101
    mistral = load_shape("mistral-7b-instruct-v0.1")
    assert kv_slots(mistral, 32768, 4) == 4096 + 4
    assert kv_slots(mistral, 1000, 4) == 1004


@pytest.mark.parametrize("name", ["llama-68m", "smollm2-135m-instruct", "qwen2.5-0.5b-instruct", "gemma-2b"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_kv_equals_transformers_static_cache(name, dtype):
    cfg = {k: v for k, v in load_preset_config(name).items() if not k.startswith("_")}
    config = AutoConfig.for_model(**cfg)
    shape = load_shape(name)
    batch, slots = 3, 37
    cache = StaticCache(config=config, max_cache_len=slots)
    cache.early_initialization(batch, shape.num_kv_heads, shape.head_dim, dtype, torch.device("cpu"))
    allocated = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_cache_bytes(shape, batch, slots, 0, "fp16" if dtype == torch.float16 else "fp32") == allocated


def test_candidate_buffers_by_hand():
    knobs = Knobs(batch_size=2, max_context=4096, draft_length=4)
    # target_logits 2*5*32000*2, verify_mask 2*5*4100, lengths 2*8,
    # draft_tokens 2*4*8, draft_logits 2*4*32000*2, draft_mask 2*4100
    assert candidate_buffer_bytes(LLAMA7, DRAFT, knobs) == 640_000 + 41_000 + 16 + 64 + 512_000 + 8_200
    plain = Knobs(batch_size=2, max_context=4096)
    assert candidate_buffer_bytes(LLAMA7, None, plain) == 2 * 32000 * 2 + 2 * 4096 + 16


def test_plain_decoding_has_no_draft_parts():
    b = breakdown(LLAMA7, None, Knobs(batch_size=1, max_context=2048))
    assert b.components["draft_weights"] == b.components["draft_kv"] == 0
    assert b.generation_bytes == b.total_bytes - b.components["target_weights"]
    assert b.components["runtime_overhead"] == 0


def test_overhead_from_device():
    b = breakdown(LLAMA7, None, Knobs(batch_size=1, max_context=2048), device_overhead_bytes=123)
    assert b.components["runtime_overhead"] == 123


@pytest.mark.parametrize(
    "knobs, has_draft, message",
    [
        (Knobs(batch_size=0, max_context=10), False, "batch_size"),
        (Knobs(batch_size=1, max_context=-5), False, "max_context"),
        (Knobs(batch_size=1, max_context=10, draft_length=0), True, "draft_length is 0"),
        (Knobs(batch_size=1, max_context=10, draft_length=3), False, "needs a draft"),
        (Knobs(batch_size=1, max_context=10, weight_dtype="int3"), False, "weight_dtype"),
        (Knobs(batch_size=1, max_context=10, kv_dtype="int4"), False, "kv_dtype"),
    ],
)
def test_bad_knobs(knobs, has_draft, message):
    with pytest.raises(SpecMemoError, match=message):
        knobs.validate(has_draft)


knob_values = st.fixed_dictionaries({
    "batch_size": st.integers(1, 64), "max_context": st.integers(1, 32768), "draft_length": st.integers(1, 16),
    "weight_dtype": st.sampled_from(["fp16", "bf16", "fp32", "int8", "int4", "fp8"]),
    "prefill_chunk": st.one_of(st.none(), st.integers(1, 4096)),
})


@settings(max_examples=150, deadline=None)
@given(knob_values, st.sampled_from(["batch_size", "max_context", "draft_length"]), st.integers(1, 1000))
def test_memory_is_monotone(values, knob, increase):
    target = load_shape("llama-3.1-8b-instruct")
    draft = load_shape("llama-3.2-1b-instruct")
    knobs = Knobs(**values)
    more = Knobs(**{**values, knob: values[knob] + increase})
    for d, k in ((draft, knobs), (None, Knobs(**{**values, "draft_length": 0}))):
        if d is None and knob == "draft_length":
            continue
        bigger = more if d is not None else Knobs(**{**values, knob: values[knob] + increase, "draft_length": 0})
        before, after = breakdown(target, d, k), breakdown(target, d, bigger)
        assert after.total_bytes >= before.total_bytes
        for name, value in before.components.items():
            assert after.components[name] >= value, name


GEMMA3 = load_shape("gemma-3-1b-it")  # 26 layers: 5 local (window 512) then 1 global, repeated


def test_hybrid_windows_by_hand():
    windows = [c.window for c in GEMMA3.cache_layers]
    assert windows.count(None) == 4 and windows.count(512) == 22
    # per token per layer: 1 KV head x (256 + 256) x 2 bytes; local layers hold 512 + k, global C + k
    per_slot = 1 * 512 * 2
    assert kv_cache_bytes(GEMMA3, 2, 4096, 4, "fp16") == 2 * per_slot * (22 * (512 + 4) + 4 * (4096 + 4))
    assert kv_cache_bytes(GEMMA3, 1, 100, 4, "fp16") == per_slot * 26 * 104  # context inside the window
    assert kv_slots(GEMMA3, 4096, 4) == 4100


def test_sliding_masks_only_where_window_layers_hold_fewer_slots():
    knobs = Knobs(batch_size=2, max_context=4096, draft_length=4)
    specs = {s.name: s.shape for s in candidate_buffer_specs(GEMMA3, GEMMA3, knobs)}
    assert specs["verify_mask"] == (2, 1, 5, 4100) and specs["verify_mask_sliding"] == (2, 1, 5, 516)
    assert specs["draft_mask"] == (2, 1, 1, 4100) and specs["draft_mask_sliding"] == (2, 1, 1, 516)
    assert specs["draft_logits"] == (2, 4, 262_144)  # the draft's own vocabulary
    short = {s.name for s in candidate_buffer_specs(GEMMA3, GEMMA3, Knobs(batch_size=1, max_context=500, draft_length=4))}
    assert "verify_mask_sliding" not in short  # the context fits the window: one mask serves all layers
    mistral = {s.name: s.shape for s in candidate_buffer_specs(load_shape("mistral-7b-instruct-v0.1"), None,
                                                               Knobs(batch_size=1, max_context=32768))}
    assert mistral["verify_mask"] == (1, 1, 1, 4096) and "verify_mask_sliding" not in mistral  # every layer windowed


def test_latent_kv_by_hand():
    lite = load_shape("deepseek-v2-lite")  # 27 layers caching kv_lora_rank 512 + qk_rope_head_dim 64
    assert kv_token_bytes(lite, "fp16") == 27 * (512 + 64) * 2
    assert kv_cache_bytes(lite, 1, 1000, 0, "bf16") == 27 * 576 * 2 * 1000


def test_activations_take_the_largest_layer_type():
    """Gemma-3's global layers see all C + k slots, its local ones 512 + k: the global layer is the peak."""
    from specmemo_plan.activations import attention_elements, forward_activation_bytes

    local, glob = GEMMA3.cache_layers[0], GEMMA3.cache_layers[5]
    B, n, C, k = 1, 5, 4096, 4
    residual = 2 * B * n * GEMMA3.hidden_size
    peak = residual + max(attention_elements(GEMMA3, glob, B, n, C + k), 3 * B * n * GEMMA3.intermediate_size)
    assert attention_elements(GEMMA3, local, B, n, 512 + k) < attention_elements(GEMMA3, glob, B, n, C + k)
    assert forward_activation_bytes(GEMMA3, B, n, C, k, "fp16") == peak * 2 + B * n * ((C + k) + (512 + k))
