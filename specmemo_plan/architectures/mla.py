"""Multi-head latent attention with shared + routed experts: DeepSeek-V2 (and -Lite), DeepSeek-V3.

Per layer (transformers 5.24 models/deepseek_v2/modeling_deepseek_v2.py, deepseek_v3/modeling_deepseek_v3.py;
h heads, r_q q_lora_rank, r_kv kv_lora_rank, d_n qk_nope_head_dim, d_r qk_rope_head_dim, d_v v_head_dim):
  q          q_proj (h (d_n + d_r), H) when r_q is null, else q_a_proj (r_q, H), q_a_layernorm r_q,
             q_b_proj (h (d_n + d_r), r_q)
  kv         kv_a_proj_with_mqa (r_kv + d_r, H), kv_a_layernorm r_kv, kv_b_proj (h (d_n + d_v), r_kv)
  out        o_proj (H, h d_v); biases on q_a, kv_a and o when attention_bias
  MLP        layers < first_k_dense_replace: dense gate/up/down of intermediate_size (V2: mlp_bias);
             the others: router (E, H), E routed experts of moe_intermediate_size, and one shared MLP of
             moe_intermediate_size * n_shared_experts.
Cache: transformers caches the compressed latent, not per-head K/V: one "head" of k = kv_lora_rank
(the normed latent) and v = qk_rope_head_dim (the shared RoPE key) per token per layer.
V3's multi-token-prediction layers (num_nextn_predict_layers / num_mtp_layers) are in the checkpoint but
transformers does not build them: not counted, reported as ModelShape.mtp_layers.
"""

from __future__ import annotations

from ..errors import SpecMemoError
from .base import Architecture, CacheLayer, Experts, LatentAttention, LayerSpec
from .common import Family, core, finish, head_params, model_modules
from .fields import Config


def build_mla(cfg: Config, model_type: str) -> Architecture:
    # the config classes set head_dim = qk_rope_head_dim (what `head_dim` displays); heads need not divide H
    c = core(cfg, head_dim=cfg.int("qk_rope_head_dim"))
    H, h = c.hidden, c.heads
    v2 = model_type == "deepseek_v2"
    mla = LatentAttention(
        q_lora_rank=cfg.opt_int("q_lora_rank"), kv_lora_rank=cfg.int("kv_lora_rank"),
        qk_nope_head_dim=cfg.int("qk_nope_head_dim"), qk_rope_head_dim=cfg.int("qk_rope_head_dim"),
        v_head_dim=cfg.int("v_head_dim"),
    )
    bias = cfg.flag("attention_bias", False)
    mlp_bias = cfg.flag("mlp_bias", False) if v2 else False
    q_out = h * mla.qk_head_dim
    if mla.q_lora_rank is None:
        attention = [(q_out, H, 1, False)]
        other = 0
    else:
        attention = [(mla.q_lora_rank, H, 1, False), (q_out, mla.q_lora_rank, 1, False)]
        other = mla.q_lora_rank * (1 + bias)  # q_a_layernorm, q_a_proj bias
    attention += [(mla.kv_lora_rank + mla.qk_rope_head_dim, H, 1, False),
                  (h * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank, 1, False),
                  (H, h * mla.v_head_dim, 1, False)]
    other += mla.kv_lora_rank + (mla.kv_lora_rank + mla.qk_rope_head_dim + H) * bias + 2 * H
    E, top_k = cfg.int("n_routed_experts"), cfg.int("num_experts_per_tok")
    I_e = cfg.int("moe_intermediate_size")
    shared = cfg.int("n_shared_experts", minimum=0) * I_e
    first_dense = cfg.int("first_k_dense_replace", minimum=0)
    if top_k > E:
        raise SpecMemoError(f"{cfg.where}: num_experts_per_tok {top_k} exceeds the {E} experts")
    cache = CacheLayer(1, mla.kv_lora_rank, mla.qk_rope_head_dim, None)
    dense = LayerSpec(tuple(attention) + ((c.intermediate, H, 2, False), (H, c.intermediate, 1, False)),
                      other + (2 * c.intermediate + H) * mlp_bias, cache)
    moe = LayerSpec(
        tuple(attention) + ((I_e, H, 2 * E, True), (H, I_e, E, True), (shared, H, 2, False), (H, shared, 1, False)),
        other + E * H + (2 * shared + H) * mlp_bias * bool(shared), cache,
    )
    layers = [dense if i < first_dense else moe for i in range(c.layers)]
    moe_layers = sum(1 for i in range(c.layers) if i >= first_dense)
    experts = Experts(E, top_k, moe_layers, 3 * I_e * H, intermediate_size=I_e, shared_intermediate_size=shared)
    mtp = 0 if v2 else (cfg.opt_int("num_nextn_predict_layers", "num_mtp_layers", minimum=0) or 0)
    notes = []
    if v2 and cfg.cfg.get("moe_layer_freq", 1) != 1:
        notes.append(f"moe_layer_freq {cfg.cfg['moe_layer_freq']} is ignored, as transformers ignores it: "
                     f"every layer from first_k_dense_replace={first_dense} on has experts")
    if mtp:
        notes.append(f"{mtp} multi-token-prediction layer(s) in the checkpoint are not counted "
                     "(transformers does not build them)")
    outer = c.vocab * H + H + head_params(c)
    # V3's router keeps e_score_correction_bias, a float32 buffer of E, in every MoE layer
    buffers = tuple(0 if v2 or i < first_dense else E for i in range(c.layers))
    modules = model_modules(c, "DeepseekV2DecoderLayer" if v2 else "DeepseekV3DecoderLayer",
                            rotary_dim=mla.qk_rope_head_dim, layer_buffers=buffers)
    # `_keep_in_fp32_modules_strict = ["gate.weight", ...]`: each MoE layer's router stays float32 in 16 bits
    return finish(cfg, model_type, c, layers, outer, experts=experts, mtp_layers=mtp, latent=mla, modules=modules,
                  notes=tuple(notes), fp32_params_16bit=moe_layers * E * H)


_COMMON = dict(max_position_embeddings=2048, tie_word_embeddings=False, attention_bias=False, q_lora_rank=1536,
               kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
FAMILIES = {
    "deepseek_v2": Family(
        "deepseek_v2", "DeepseekV2Config", lambda cfg: build_mla(cfg, "deepseek_v2"),
        dict(_COMMON, vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=None, mlp_bias=False, n_routed_experts=64,
             first_k_dense_replace=0, n_shared_experts=2, moe_intermediate_size=1407),
        "models/deepseek_v2/modeling_deepseek_v2.py"),
    "deepseek_v3": Family(
        "deepseek_v3", "DeepseekV3Config", lambda cfg: build_mla(cfg, "deepseek_v3"),
        dict(_COMMON, vocab_size=129280, hidden_size=7168, intermediate_size=18432, num_hidden_layers=61,
             num_attention_heads=128, num_key_value_heads=128, max_position_embeddings=4096, n_routed_experts=256,
             num_experts_per_tok=8, first_k_dense_replace=3, n_shared_experts=1, moe_intermediate_size=2048),
        "models/deepseek_v3/modeling_deepseek_v3.py"),
}
