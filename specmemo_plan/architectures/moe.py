"""Mixture-of-experts decoders with standard (GQA) attention: Mixtral, Qwen3-MoE, GPT-OSS.

Per layer (transformers' modeling files; E experts, I_e one expert's inner width):
- attention as the dense families: q/k/v/o, plus Qwen3-MoE's per-head q_norm/k_norm, GPT-OSS's q/k/v/o
  biases (attention_bias) and its attention sinks (one learned logit per head: parameters, not cache);
- a router (E, H) (GPT-OSS: with a bias of E);
- E routed experts, each gate (I_e, H), up (I_e, H), down (H, I_e) (GPT-OSS: with biases 2 I_e and H);
  transformers stores them fused as 3D tensors (gate_up_proj [E, 2I_e, H]); we count the same weights;
- Qwen3-MoE: layers in mlp_only_layers or off the decoder_sparse_step are dense MLPs of intermediate_size.
The weights hold every expert; a step reads only the experts its tokens are routed to (throughput.py).
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import SpecMemoError
from .base import Architecture, CacheLayer, Experts, LayerSpec
from .common import Family, core, finish, head_params, model_modules
from .fields import Config
from .windows import layer_windows


def _expert(H: int, I: int, bias: bool) -> tuple[tuple, int]:
    """(matrices of one expert's share, its parameters): gate, up (I, H), down (H, I)."""
    return ((I, H, 2, True), (H, I, 1, True)), 3 * I * H + (2 * I + H) * bias


def build_moe(cfg: Config, model_type: str) -> Architecture:
    c = core(cfg, intermediate=model_type == "qwen3_moe")
    H, d = c.hidden, c.head_dim
    q, kv = c.heads * d, c.kv_heads * d
    if model_type == "qwen3_moe":
        # a config saved by transformers 5.24 states the count as num_local_experts (num_experts: null)
        E, I_e = cfg.int("num_experts", "num_local_experts"), cfg.int("moe_intermediate_size")
        step = cfg.int("decoder_sparse_step")
        dense_only = set(cfg.index_list("mlp_only_layers", c.layers))
        moe = [i not in dense_only and (i + 1) % step == 0 for i in range(c.layers)]
        bias, expert_bias, router_bias, qk_norm = cfg.flag("attention_bias", False), False, False, 2 * d
        rule = "qwen_moe"
    else:
        E = cfg.int("num_local_experts")
        I_e = cfg.int("intermediate_size")
        c = replace(c, intermediate=I_e)
        moe = [True] * c.layers
        gpt_oss = model_type == "gpt_oss"
        bias = cfg.flag("attention_bias", True) if gpt_oss else False
        expert_bias = router_bias = gpt_oss
        qk_norm = c.heads if gpt_oss else 0  # GPT-OSS: sinks, one per head
        rule = "alternate" if gpt_oss else "all"
    top_k = cfg.int("num_experts_per_tok")
    attention = ((q, H, 1, False), (kv, H, 2, False), (H, q, 1, False))
    attention_other = 2 * H + (q + 2 * kv + H) * bias + qk_norm  # two RMSNorms, biases, q/k norms or sinks
    expert_matrices, expert_params = _expert(H, I_e, expert_bias)
    routed = tuple((o, i, n * E, True) for o, i, n, _ in expert_matrices)
    router = E * H + E * router_bias
    dense_mlp = ((c.intermediate, H, 2, False), (H, c.intermediate, 1, False))
    layers = []
    for window, is_moe in zip(layer_windows(cfg, rule, c.layers), moe):
        cache = CacheLayer(c.kv_heads, d, d, window)
        if is_moe:
            other = attention_other + router + E * (expert_params - 3 * I_e * H)
            layers.append(LayerSpec(attention + routed, other, cache))
        else:
            layers.append(LayerSpec(attention + dense_mlp, attention_other, cache))
    experts = Experts(E, top_k, sum(moe), expert_params, intermediate_size=I_e)
    if top_k > E:
        raise SpecMemoError(f"{cfg.where}: num_experts_per_tok {top_k} exceeds the {E} experts")
    outer = c.vocab * H + H + head_params(c)
    modules = model_modules(c, LAYER_CLASSES[model_type])
    # GPT-OSS `_keep_in_fp32_modules = ["post_attention_layernorm", "input_layernorm", "norm"]`: in fp16 only
    norms = (2 * c.layers + 1) * H if model_type == "gpt_oss" else 0
    return finish(cfg, model_type, c, layers, outer, experts=experts, modules=modules, fp32_params_fp16=norms)


LAYER_CLASSES = {"mixtral": "MixtralDecoderLayer", "qwen3_moe": "Qwen3MoeDecoderLayer", "gpt_oss": "GptOssDecoderLayer"}


FAMILIES = {
    "mixtral": Family(
        "mixtral", "MixtralConfig", lambda cfg: build_moe(cfg, "mixtral"),
        dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, sliding_window=None,
             tie_word_embeddings=False, num_local_experts=8, num_experts_per_tok=2),
        "models/mixtral/modeling_mixtral.py"),
    "qwen3_moe": Family(
        "qwen3_moe", "Qwen3MoeConfig", lambda cfg: build_moe(cfg, "qwen3_moe"),
        dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
             num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=32768, sliding_window=4096,
             tie_word_embeddings=False, attention_bias=False, num_experts=128, num_experts_per_tok=8,
             moe_intermediate_size=768, decoder_sparse_step=1),
        "models/qwen3_moe/modeling_qwen3_moe.py"),
    "gpt_oss": Family(
        "gpt_oss", "GptOssConfig", lambda cfg: build_moe(cfg, "gpt_oss"),
        dict(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=36,
             num_attention_heads=64, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
             sliding_window=128, tie_word_embeddings=False, attention_bias=True, num_local_experts=128,
             num_experts_per_tok=4),
        "models/gpt_oss/modeling_gpt_oss.py"),
}
