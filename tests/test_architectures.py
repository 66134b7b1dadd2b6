"""Every family sized by formula: parameters = transformers' meta-device build, KV = StaticCache's allocation.

Shrunk configs keep each family's pattern (its layer types, fused matrices, biases, norms, experts, latent
attention) with few layers and a small hidden size, so each build takes milliseconds.
"""

import dataclasses

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, StaticCache
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from specmemo_plan.architectures import FAMILIES, SUPPORTED_MODEL_TYPES
from specmemo_plan.memory import kv_cache_bytes, kv_layer_slots
from specmemo_plan.models import shape_from_config

BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=256)
WINDOW = 8  # shorter than the cache length the tests allocate (LENGTH)
LENGTH = 20
MLA = dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4,
           num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1, n_shared_experts=1,
           n_group=1, topk_group=1)

SHRUNK = {
    "llama": dict(model_type="llama", attention_bias=True, mlp_bias=True),
    "mistral": dict(model_type="mistral", sliding_window=WINDOW),
    "qwen2": dict(model_type="qwen2", use_sliding_window=True, sliding_window=WINDOW, max_window_layers=4),
    "qwen3": dict(model_type="qwen3", head_dim=32, use_sliding_window=True, sliding_window=WINDOW,
                  max_window_layers=2),
    "gemma": dict(model_type="gemma", head_dim=32, tie_word_embeddings=True),
    "gemma2": dict(model_type="gemma2", head_dim=16, sliding_window=WINDOW),
    "gemma3_text": dict(model_type="gemma3_text", head_dim=16, sliding_window=WINDOW, sliding_window_pattern=3),
    "olmo2": dict(model_type="olmo2"),
    "granite": dict(model_type="granite", mlp_bias=True),
    "smollm3": dict(model_type="smollm3", no_rope_layer_interval=3),
    "phi3": dict(model_type="phi3", sliding_window=WINDOW, partial_rotary_factor=0.5),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=3, n_head=4, n_positions=64, n_inner=None),
    "gpt_bigcode": dict(model_type="gpt_bigcode", n_embd=64, n_layer=3, n_head=4, n_positions=64),
    "gpt_neox": dict(model_type="gpt_neox", rotary_pct=0.25),
    "starcoder2": dict(model_type="starcoder2", sliding_window=WINDOW),
    "mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW),
    "qwen3_moe": dict(model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      head_dim=16, mlp_only_layers=[2], decoder_sparse_step=2),
    "gpt_oss": dict(model_type="gpt_oss", num_local_experts=4, num_experts_per_tok=2, head_dim=16,
                    sliding_window=WINDOW),
    "deepseek_v2": dict(model_type="deepseek_v2", q_lora_rank=None, num_key_value_heads=4, **MLA),
    "deepseek_v3": dict(model_type="deepseek_v3", q_lora_rank=24, num_nextn_predict_layers=1, num_key_value_heads=4,
                        **MLA),
}


def shrunk(model_type: str) -> dict:
    cfg = dict(BASE, **SHRUNK[model_type])
    if model_type in ("gpt2", "gpt_bigcode"):
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "max_position_embeddings"):
            cfg.pop(key)
    if model_type == "gpt_neox":  # GPTNeoXConfig has no num_key_value_heads
        cfg.pop("num_key_value_heads")
    return cfg


def meta_model(cfg: dict):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))


def test_every_family_has_a_shrunk_config():
    assert set(SHRUNK) == set(FAMILIES)
    assert "gemma3" in SUPPORTED_MODEL_TYPES


@pytest.mark.parametrize("model_type", sorted(SHRUNK))
def test_parameters_equal_the_meta_build(model_type):
    cfg = shrunk(model_type)
    shape = shape_from_config(cfg, model_type, "config:x")
    model = meta_model(cfg)
    assert shape.num_params == sum(p.numel() for p in model.parameters())
    assert shape.num_layers == len(shape.cache_layers) == len(shape.layer_params)
    body = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n or ".h." in n)
    assert sum(shape.layer_params) == body


def static_cache_bytes(cfg: dict, shape, batch: int, length: int, dtype) -> int:
    """What transformers' StaticCache allocates for this config: one prefill forward on CPU fills it."""
    config = AutoConfig.for_model(**cfg)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    cache = StaticCache(config=config, max_cache_len=length)
    with torch.no_grad():
        model(torch.ones(batch, 3, dtype=torch.long), past_key_values=cache, use_cache=True)
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


@pytest.mark.parametrize("model_type", sorted(SHRUNK))
def test_kv_equals_static_cache(model_type):
    cfg = shrunk(model_type)
    shape = shape_from_config(cfg, model_type, "config:x")
    allocated = static_cache_bytes(cfg, shape, 2, LENGTH, torch.float32)
    assert kv_cache_bytes(shape, 2, LENGTH, 0, "fp32") == allocated


def test_window_layers_follow_each_family_rule():
    windows = {t: tuple(c.window for c in shape_from_config(shrunk(t), t, "x").cache_layers) for t in SHRUNK}
    W, F = WINDOW, None
    assert windows["mistral"] == windows["phi3"] == windows["starcoder2"] == windows["mixtral"] == (W,) * 6
    assert windows["qwen2"] == (F, F, F, F, W, W)  # layers >= max_window_layers
    assert windows["qwen3"] == (F, F, W, W, W, W)
    assert windows["gemma2"] == windows["gpt_oss"] == (W, F, W, F, W, F)  # even layers local
    assert windows["gemma3_text"] == (W, W, F, W, W, F)  # pattern 3: every third global
    assert windows["llama"] == windows["smollm3"] == windows["deepseek_v3"] == (F,) * 6


def test_latent_cache_is_one_head_of_the_latent():
    shape = shape_from_config(shrunk("deepseek_v3"), "v3", "x")
    assert {(c.kv_heads, c.k_dim, c.v_dim) for c in shape.cache_layers} == {(1, 16, 4)}
    assert shape.mtp_layers == 1 and any("multi-token-prediction" in n for n in shape.notes)
    assert shape.experts.moe_layers == 5 and shape.experts.num_experts == 4


def test_ring_buffer_slots():
    shape = shape_from_config(shrunk("gemma3_text"), "g", "x")
    local, glob = shape.cache_layers[0], shape.cache_layers[2]
    assert kv_layer_slots(glob, 100, 4) == 104
    assert kv_layer_slots(local, 100, 4) == WINDOW + 4
    assert kv_layer_slots(local, 3, 4) == 7


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_defaults_are_the_config_class_defaults(model_type):
    """The defaults a family fills in (and names in its notes) are transformers' own."""
    fields = {f.name: f.default for f in dataclasses.fields(CONFIG_MAPPING[model_type])}
    for key, value in FAMILIES[model_type].defaults.items():
        assert fields[key] == value, key
    assert CONFIG_MAPPING[model_type].__name__ == FAMILIES[model_type].config_class


@pytest.mark.parametrize("model_type", sorted(set(SHRUNK) - {"gpt_bigcode"}))
def test_layout_is_accelerates_module_sizes(model_type):
    """Each placement unit's bytes are what accelerate's compute_module_sizes counts, buffers included."""
    from accelerate.utils import compute_module_sizes

    from specmemo_plan.placement.layout import NO_SPLIT_CLASSES, layout

    cfg = shrunk(model_type)
    shape = shape_from_config(cfg, model_type, "x")
    model = meta_model(cfg)
    assert NO_SPLIT_CLASSES[model_type] in model._no_split_modules
    for dtype, torch_dtype in (("fp16", torch.float16), ("fp32", torch.float32)):
        sizes = compute_module_sizes(model, dtype=torch_dtype)
        for unit in layout(shape, dtype).units:
            assert unit.accelerate_bytes == sizes[unit.name], (dtype, unit.name)


def test_bigcode_split_is_refused():
    from specmemo_plan.errors import SpecMemoError
    from specmemo_plan.placement.layout import layout

    with pytest.raises(SpecMemoError, match="cannot be split over devices"):
        layout(shape_from_config(shrunk("gpt_bigcode"), "bc", "x"), "fp16")


@pytest.mark.parametrize("model_type", ["cohere", "olmo", "qwen2_moe"])
def test_other_transformers_types_take_the_meta_build(model_type):
    """A model_type without a formula: transformers' meta build gives the parameters, its config the cache."""
    extra = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                 shared_expert_intermediate_size=48) if model_type == "qwen2_moe" else {}
    cfg = dict(BASE, model_type=model_type, **extra)
    shape = shape_from_config(cfg, model_type, "x")
    assert shape.weight_source == "transformers meta-device build (generic path, slower)"
    assert "slower generic path" in shape.notes[0]
    assert shape.num_params == sum(p.numel() for p in meta_model(cfg).parameters())
    assert kv_cache_bytes(shape, 2, LENGTH, 0, "fp32") == static_cache_bytes(cfg, shape, 2, LENGTH, torch.float32)
    assert (shape.experts is not None) == (model_type == "qwen2_moe")


def test_non_standard_attention_is_refused():
    from specmemo_plan.errors import SpecMemoError

    with pytest.raises(SpecMemoError, match="attention is not standard"):
        shape_from_config(dict(BASE, model_type="falcon", new_decoder_architecture=False), "falcon", "x")


def test_without_transformers_the_refusal_names_the_supported_types(monkeypatch):
    import importlib.util

    from specmemo_plan.errors import SpecMemoError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(SpecMemoError, match=r"model_type 'cohere' is not supported \(supported: deepseek_v2, ") as info:
        shape_from_config(dict(BASE, model_type="cohere"), "c", "x")
    assert "\n" not in str(info.value)
