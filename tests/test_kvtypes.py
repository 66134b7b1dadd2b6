"""KV cache types: llama.cpp's block types at their real sizes, separate K and V, one-line refusals."""

import pytest

from specmemo_plan.errors import SpecMemoError
from specmemo_plan.kvtypes import (
    ALIASES,
    ENGINE_SPELLINGS,
    KV_TYPES,
    LLAMACPP_TYPES,
    engines_for,
    kv_pair_notes,
    kv_row_bytes,
    kv_type,
    parse_kv_dtypes,
)


@pytest.mark.parametrize("name,block_values,block_bytes,bits", [
    ("fp32", 1, 4, 32), ("fp16", 1, 2, 16), ("bf16", 1, 2, 16), ("fp8", 1, 1, 8), ("fp8_e4m3", 1, 1, 8),
    ("fp8_e5m2", 1, 1, 8), ("int8", 1, 1, 8), ("q8_0", 32, 34, 8.5), ("q4_0", 32, 18, 4.5),
    ("q4_1", 32, 20, 5.0), ("iq4_nl", 32, 18, 4.5), ("q5_0", 32, 22, 5.5), ("q5_1", 32, 24, 6.0),
])
def test_every_type_at_its_block_size(name, block_values, block_bytes, bits):
    t = kv_type(name)
    assert (t.name, t.block_values, t.block_bytes, t.bits_per_value) == (name, block_values, block_bytes, bits)


def test_llama_cpp_block_types_match_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    for name in ("q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"):
        t = KV_TYPES[name]
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]] == (t.block_values, t.block_bytes)


def test_row_bytes_of_a_llama_3_8b_layer():
    # 8 KV heads x head_dim 128 = 1024 values per token and layer
    rows = {n: kv_row_bytes(kv_type(n), 1024, head_dim=128) for n in ("fp16", "q8_0", "q4_0", "fp8")}
    assert rows == {"fp16": 2048, "q8_0": 1088, "q4_0": 576, "fp8": 1024}


def test_a_head_size_that_is_not_whole_blocks_is_refused_as_llama_cpp_does():
    with pytest.raises(SpecMemoError) as err:
        kv_row_bytes(kv_type("q4_0"), 2 * 80, head_dim=80, which="V")
    assert err.value.message == "V cache type q4_0 stores blocks of 32 values, which do not divide the head size 80"
    assert "'V cache type q4_0 with block size 32 does not divide n_embd_head_v=80'" in err.value.hint
    with pytest.raises(SpecMemoError, match=r"a row of 48 values is not a whole number of 32-value blocks"):
        kv_row_bytes(kv_type("q8_0"), 48)
    assert kv_row_bytes(kv_type("fp16"), 2 * 80, head_dim=80) == 320  # plain types take any size


def test_parse_k_and_v():
    assert [t.name for t in parse_kv_dtypes("q8_0:f16")] == ["q8_0", "fp16"]
    assert [t.name for t in parse_kv_dtypes("q8_0")] == ["q8_0", "q8_0"]
    assert [t.name for t in parse_kv_dtypes(" Q4_0 : bfloat16 ")] == ["q4_0", "bf16"]
    assert [t.name for t in parse_kv_dtypes("fp8_e5m2")] == ["fp8_e5m2", "fp8_e5m2"]


@pytest.mark.parametrize("text,message", [
    ("q8", "unknown KV cache type 'q8'"),
    ("q8_0:bogus", "unknown KV cache type 'bogus'"),
    ("auto", "KV type 'auto' is the engine's default, not a type"),
    ("q8_0:", "cannot read KV types 'q8_0:'"),
    ("a:b:c", "cannot read KV types 'a:b:c'"),
    ("", "cannot read KV types ''"),
])
def test_parse_mistakes_are_one_line(text, message):
    with pytest.raises(SpecMemoError) as err:
        parse_kv_dtypes(text)
    assert err.value.message == message and "\n" not in str(err.value)
    if message.startswith("unknown"):
        assert err.value.hint.startswith("known: fp32, fp16, bf16, fp8, fp8_e4m3, fp8_e5m2, int8, q8_0, q4_0")


def test_pair_notes_and_engines():
    q8, f16 = parse_kv_dtypes("q8_0:f16")
    assert engines_for(q8, f16) == ("llama.cpp",)
    assert kv_pair_notes(q8, f16) == (
        "separate K and V types: llama.cpp sets them apart (-ctk / -ctv); vLLM and SGLang take one --kv-cache-dtype for both",)
    assert kv_pair_notes(f16, q8) == kv_pair_notes(q8, f16) + ("llama.cpp: a q8_0 V cache needs flash attention (-fa on)",)
    fp8 = kv_type("fp8_e4m3")
    assert engines_for(fp8, fp8) == ("vllm", "sglang") and kv_pair_notes(fp8, fp8) == ()
    assert engines_for(f16, f16) == ("llama.cpp", "vllm")


def test_the_tables_agree():
    assert set(ALIASES.values()) <= set(KV_TYPES)
    assert all(set(names) <= set(KV_TYPES) for names in ENGINE_SPELLINGS.values())
    # llama.cpp's own list (common/arg.cpp kv_cache_types), in its spelling
    assert [ENGINE_SPELLINGS["llama.cpp"][n] for n in LLAMACPP_TYPES] == [
        "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]


# ----------------------------------------------------------------------------- wired into the memory model


def test_kv_types_in_the_breakdown_and_the_exports():
    from specmemo_plan.export import export_plan
    from specmemo_plan.memory import Knobs, breakdown
    from specmemo_plan.models import load_shape
    from specmemo_plan.plan import DeviceSpec, make_plan

    t = load_shape("llama-3.1-8b-instruct")  # 32 layers, 8 KV heads x 128
    C = 4096
    for spec, k_row, v_row in (("q8_0", 8 * 128 // 32 * 34, 8 * 128 // 32 * 34),
                               ("q8_0:f16", 8 * 128 // 32 * 34, 8 * 128 * 2),
                               ("fp8", 8 * 128, 8 * 128)):
        mem = breakdown(t, None, Knobs(batch_size=2, max_context=C, kv_dtype=spec))
        assert mem.components["target_kv"] == 32 * (k_row + v_row) * 2 * C
    gpu = DeviceSpec(kind="cuda", name="NVIDIA GeForce RTX 4090", total_memory_bytes=25_757_220_864)
    plan = make_plan("llama-3.1-8b-instruct", t, None, None, Knobs(batch_size=1, max_context=C, kv_dtype="q8_0:q4_0"),
                     gpu, 20 * 2**30)
    cmd = export_plan(plan, "llama.cpp").command
    assert "-ctk q8_0" in cmd and "-ctv q4_0" in cmd and "-fa on" in cmd
    vllm = export_plan(plan, "vllm")
    assert vllm.settings["kv_cache_dtype"] == "auto"
    assert any("takes one type for K and V" in u for u in vllm.unsupported)


def test_a_head_size_that_is_not_whole_blocks_is_refused():
    from specmemo_plan.memory import Knobs, breakdown
    from specmemo_plan.models import shape_from_config

    cfg = {"model_type": "llama", "hidden_size": 240, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 5, "vocab_size": 32, "max_position_embeddings": 64}  # head_dim 48
    shape = shape_from_config(cfg, "h48", "config:h48")
    assert breakdown(shape, None, Knobs(batch_size=1, max_context=8, kv_dtype="fp16")).components["target_kv"] > 0
    with pytest.raises(SpecMemoError, match="do not divide the head size 48"):
        breakdown(shape, None, Knobs(batch_size=1, max_context=8, kv_dtype="q8_0"))
