"""The draft-head presets (specmemo_plan/presets/heads/): published files, and the real stored size of each head.

EXPECTED holds what the Hub lists for each head's weight file (sources in the comments), and a hand count of
the head's tensors from its published layout that lands on it. The last test checks the planner's head
formula (specmemo_plan.drafting) against the same numbers; it skips itself until that module exists.
"""

import json
from pathlib import Path

import pytest

HEADS = Path(__file__).resolve().parents[1] / "specmemo_plan" / "presets" / "heads"
MB, GB = 10**6, 10**9  # the Hub's file list prints decimal units, 3 significant digits


def head(name: str) -> dict:
    return json.loads((HEADS / f"{name}.json").read_text())


# name -> (stored bytes as the Hub lists them, half-width of the Hub's rounding, what the file holds)
EXPECTED = {
    # huggingface.co/yuhuili/EAGLE3-LLaMA3.1-Instruct-8B/tree/main (commit 607d0d5): pytorch_model.bin "850 MB",
    # pickle imports HalfStorage, LongStorage, BoolStorage: fp16 weights + int64 d2t + bool t2d, no embedding
    "eagle3-llama3.1-instruct-8b": (850 * MB, MB // 2, "fp16, d2t + t2d, embedding shared (not stored)"),
    # huggingface.co/yuhuili/EAGLE-Vicuna-7B-v1.3/tree/7eb58b1...: pytorch_model.bin "1.47 GB", FloatStorage
    "eagle-vicuna-7b-v1.3": (1470 * MB, 5 * MB, "fp32, embedding stored"),
    # huggingface.co/yuhuili/EAGLE-llama2-chat-7B/blob/ed8213c.../pytorch_model.bin: "1.47 GB" (same shapes)
    "eagle-llama2-chat-7b": (1470 * MB, 5 * MB, "fp32 by its size, embedding stored"),
    # huggingface.co/abhigoyal/vllm-medusa-vicuna-7b-v1.3 commit 53b582b: LFS pointer "size 1478493144"
    # (FasterDecoding/medusa-vicuna-7b-v1.3's medusa_lm_head.pt: "1.48 GB", BFloat16Storage)
    "vllm-medusa-vicuna-7b-v1.3": (1_478_493_144, 0, "16-bit, 5 heads, safetensors file (header included)"),
}

# deepseek-ai/DeepSeek-V3 README_WEIGHTS.md (GitHub): "MTP Modules ... Parameters: 11.5B unique parameters,
# excluding the shared 0.9B Embedding and 0.9B output Head"; "Main Model Weights ... Total parameters: 671B".
# The target preset `deepseek-v3` is its inference/configs/config_671B.json under config.json's names.
DEEPSEEK_V3_MTP_UNIQUE_PARAMS = 11.5 * GB


def test_every_head_names_its_source_and_where_it_was_read():
    names = sorted(p.stem for p in HEADS.glob("*.json"))
    assert names == ["eagle-llama2-chat-7b", "eagle-vicuna-7b-v1.3", "eagle3-llama3.1-instruct-8b",
                     "eagle3-llama3.3-70b-specforge", "medusa-vicuna-7b-v1.3", "vllm-medusa-vicuna-7b-v1.3"]
    for name in names:
        cfg = head(name)
        assert "/" in cfg["_specmemo_source"] and cfg["_specmemo_fetched"]
        assert [k for k in cfg if k.startswith("_specmemo")] == ["_specmemo_source", "_specmemo_fetched"]


def published_bytes(cfg: dict) -> int:
    """The file as published: its keys in 2-space JSON (as the Hub's files are), without the added keys."""
    return len(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_specmemo")}, indent=2))


def test_files_have_the_byte_size_the_hub_lists():
    assert published_bytes(head("eagle-vicuna-7b-v1.3")) == 500  # tree/7eb58b1: config.json 500 Bytes
    assert published_bytes(head("eagle-llama2-chat-7b")) == 560  # blob/ed8213c: 560 Bytes
    assert published_bytes(head("medusa-vicuna-7b-v1.3")) + 1 == 143  # blame/main: 143 Bytes (a final newline)
    vllm_medusa = {k: v for k, v in head("vllm-medusa-vicuna-7b-v1.3").items() if not k.startswith("_specmemo")}
    assert len(json.dumps(vllm_medusa)) == 261  # one line, as added in commit 53b582b
    eagle3 = {k: v for k, v in head("eagle3-llama3.1-instruct-8b").items() if not k.startswith("_specmemo")}
    text = json.dumps(eagle3, indent=2)
    assert len(text.replace("\n", "\r\n")) == 591  # tree/main at 607d0d5: 591 Bytes, with CRLF line ends


def eagle3_params(c: dict) -> int:
    """EAGLE-3 head without the embedding (SafeAILab/EAGLE eagle/model/cnets.py): fc 3H -> H, q/k/v read 2H,
    o_proj, MLP, 4 norms (hidden_norm, input_layernorm, post_attention_layernorm, final norm), lm_head H -> V_d."""
    h, i, v_d = c["hidden_size"], c["intermediate_size"], c["draft_vocab_size"]
    d = h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    return 3 * h * h + 2 * h * (q + 2 * kv) + q * h + 3 * h * i + 4 * h + h * v_d


def eagle1_params(c: dict) -> int:
    """EAGLE-1 head with its embedding (SafeAILab/EAGLE eagle/model/cnets1.py): embed_tokens V x H, fc 2H -> H
    with bias, one decoder layer without input_layernorm (post_attention_layernorm only), no lm_head."""
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c.get("num_key_value_heads", c["num_attention_heads"]) * (h // c["num_attention_heads"])
    return v * h + (2 * h * h + h) + (2 * h * h + 2 * h * kv) + 3 * h * i + h


def medusa_params(c: dict) -> int:
    """Medusa heads (vLLM model_executor/models/medusa.py): num_heads x (num_hidden_layers ResidualBlocks of
    Linear(H, H), no bias by default + an lm_head V x H)."""
    h, v = c["hidden_size"], c["vocab_size"]
    return c["num_heads"] * (c["num_hidden_layers"] * h * h + v * h)


def test_eagle3_8b_layout_is_the_stored_850_mb():
    c = head("eagle3-llama3.1-instruct-8b")
    params = eagle3_params(c)
    assert params == 424_689_664
    stored = 2 * params + 8 * c["draft_vocab_size"] + c["vocab_size"]  # fp16 + d2t int64[V_d] + t2d bool[V]
    assert stored == 849_763_584
    want, rounding, _ = EXPECTED["eagle3-llama3.1-instruct-8b"]
    assert abs(stored - want) <= rounding


def test_eagle3_8b_read_as_a_plain_llama_is_the_issue_s_plus_199_percent():
    """What a reader that sees a 1-layer Llama counts: untied V x H embedding and lm_head, H-wide q/k/v, no fc."""
    c = head("eagle3-llama3.1-instruct-8b")
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    as_llama = 2 * v * h + (2 * h * h + 2 * h * kv) + 3 * h * i + 3 * h
    assert as_llama == 1_268_789_248
    assert round(2 * as_llama / EXPECTED["eagle3-llama3.1-instruct-8b"][0] - 1, 2) == 1.99


@pytest.mark.parametrize("name", ["eagle-vicuna-7b-v1.3", "eagle-llama2-chat-7b"])
def test_eagle1_7b_layout_is_the_stored_1_47_gb_in_fp32(name):
    params = eagle1_params(head(name))
    assert params == 367_009_792
    want, rounding, _ = EXPECTED[name]
    assert abs(4 * params - want) <= rounding  # 1,468,039,168 B


def test_medusa_vicuna_is_five_heads_whatever_its_config_says():
    assert head("medusa-vicuna-7b-v1.3")["medusa_num_heads"] == 2  # as published
    c = head("vllm-medusa-vicuna-7b-v1.3")
    tensors = 2 * medusa_params(c)
    assert tensors == 1_478_492_160
    header = EXPECTED["vllm-medusa-vicuna-7b-v1.3"][0] - tensors  # 8-byte length + the JSON header
    assert 8 < header < 4096
    two_heads = 2 * medusa_params({**c, "num_heads": 2})
    assert two_heads < 0.41 * tensors  # the published config's 2 heads would miss 60% of the file


def test_deepseek_v3_mtp_layout_against_the_published_11_5_b():
    """One MTP module of DeepSeek-V3 without the shared embedding and head (vLLM deepseek_mtp.py): enorm, hnorm,
    eh_proj 2H -> H, one MLA + MoE decoder layer (256 routed + 1 shared experts), shared_head.norm. Shapes: the
    DeepseekV3Config defaults, which are DeepSeek-V3's (docs.vllm.ai/en/v0.11.0 ... configs/deepseek_v3)."""
    h, moe_i, heads = 7168, 2048, 128
    q_lora, kv_lora, nope, rope, v_dim = 1536, 512, 128, 64, 128
    attention = (h * q_lora + q_lora + q_lora * heads * (nope + rope) + h * (kv_lora + rope) + kv_lora
                 + kv_lora * heads * (nope + v_dim) + heads * v_dim * h)
    moe = (256 + 1) * 3 * h * moe_i + 256 * h + 256  # experts, router weight, e_score_correction_bias
    mtp = 2 * h * h + attention + moe + 2 * h + 3 * h  # eh_proj, layer, 2 layer norms, enorm/hnorm/head norm
    assert mtp == 11_610_068_224
    # the README's 11.5 B is rounded down to 3 significant digits; the layout is within 1% of it
    assert abs(mtp / DEEPSEEK_V3_MTP_UNIQUE_PARAMS - 1) < 0.01


def test_eagle3_70b_specforge_layout():
    """SpecForge's EAGLE-3 draft config for Llama-3.3-70B-Instruct: the target's width (8192, 64 heads, 8 KV heads),
    a 32k draft vocabulary. No Hub file size to check against: the hand count is the planner's, exactly."""
    from specmemo_plan.drafting.heads import head_shape
    from specmemo_plan.models import load_shape

    c = head("eagle3-llama3.3-70b-specforge")
    target = load_shape("llama-3.3-70b-instruct")
    assert (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]) == \
        (target.hidden_size, target.num_attention_heads, target.num_kv_heads)
    assert eagle3_params(c) == 1_403_027_456  # 2.81 GB in fp16, d2t/t2d aside
    assert head_shape("eagle3", "eagle3-llama3.3-70b-specforge", target).num_params == eagle3_params(c)


def test_deepseek_v3_preset_against_the_published_671_b_and_its_mtp_layout():
    """The `deepseek-v3` target preset: 671 B main-model parameters as README_WEIGHTS.md says, and its MTP module
    (head_shape "mtp", embedding and head shared) the hand layout above less the router's e_score_correction_bias
    (256 values: a buffer in transformers' DeepseekV3TopkRouter, not a parameter, as in the target's count)."""
    from specmemo_plan.drafting.heads import head_shape
    from specmemo_plan.models import load_shape

    target = load_shape("deepseek-v3")
    assert target.mtp_layers == 1 and round(target.num_params / GB) == 671
    assert head_shape("mtp", "deepseek-v3", target, "shared").num_params == 11_610_068_224 - 256


# (method, head preset, target preset, embedding policy, bytes per parameter, stored bytes from EXPECTED)
PLANNER_CASES = [
    ("eagle3", "eagle3-llama3.1-instruct-8b", "llama-3.1-8b-instruct", "shared", 2),  # fp16, d2t/t2d < 0.05%
    ("eagle", "eagle-vicuna-7b-v1.3", "vicuna-7b-v1.3", "copied", 4),  # stored in fp32 with its embedding
    ("eagle", "eagle-llama2-chat-7b", "llama-2-7b-chat", "copied", 4),
    ("medusa", "vllm-medusa-vicuna-7b-v1.3", "vicuna-7b-v1.3", "shared", 2),
]


@pytest.mark.parametrize("method,name,target,embedding,width", PLANNER_CASES)
def test_planner_head_formulas_match_the_stored_sizes(method, name, target, embedding, width):
    """Turns itself on when specmemo_plan.drafting has head_shape(method, ref, target, embedding)."""
    heads = pytest.importorskip("specmemo_plan.drafting.heads", reason="the planner's head formulas are not in yet")
    head_shape = getattr(heads, "head_shape", None)
    if head_shape is None:
        pytest.skip("specmemo_plan.drafting.heads has no head_shape yet")
    from specmemo_plan.models import load_shape

    shape = head_shape(method, name, load_shape(target), embedding)
    assert abs(width * shape.num_params / EXPECTED[name][0] - 1) < 0.01
