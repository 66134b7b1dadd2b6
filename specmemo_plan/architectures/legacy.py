"""GPT-style decoders: LayerNorm with bias, a plain (not gated) MLP, biases on the linear layers.

Per layer (transformers' modeling files; H hidden, I inner width, d = H / heads):
- GPT-2 (modeling_gpt2.py): c_attn (3H, H), c_proj (H, H), c_fc (I, H), c_proj (H, I), all with bias;
  ln_1, ln_2; learned positions wpe (n_positions x H); I = n_inner or 4H.
- GPT-BigCode (modeling_gpt_bigcode.py): as GPT-2, but multi_query fuses c_attn to (H + 2d, H) and caches
  one K/V head (kv_heads = 1) instead of one per query head.
- GPT-NeoX (modeling_gpt_neox.py): query_key_value (3H, H), dense (H, H) with bias when attention_bias,
  dense_h_to_4h (I, H), dense_4h_to_h (H, I) with bias; two LayerNorms; no position table (RoPE).
- Starcoder2 (modeling_starcoder2.py): q/k/v/o (GQA) and c_fc/c_proj, biases when use_bias; two
  LayerNorms; RoPE; every layer windowed when sliding_window is set.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import SpecMemoError
from .base import Architecture, CacheLayer, LayerSpec, Module, ModuleLayout
from .common import Core, Family, core, finish, head_params, model_modules, rotary_buffers
from .fields import Config
from .windows import layer_windows


def _gpt_core(cfg: Config) -> tuple[Core, int]:
    """GPT-2 and GPT-BigCode name their sizes n_embd, n_head, n_layer, n_positions, n_inner."""
    vocab = cfg.int("vocab_size")
    hidden = cfg.int("n_embd", "hidden_size")
    heads = cfg.int("n_head", "num_attention_heads")
    layers = cfg.int("n_layer", "num_hidden_layers")
    if hidden % heads:
        raise SpecMemoError(f"{cfg.where}: n_embd {hidden} is not divisible by n_head {heads}",
                            "transformers refuses this config too")
    positions = cfg.int("n_positions", "max_position_embeddings")
    inner = cfg.opt_int("n_inner") or 4 * hidden
    tie = cfg.flag("tie_word_embeddings", True)
    return Core(vocab, hidden, inner, layers, heads, heads, hidden // heads, positions, tie), positions


def build_gpt2(cfg: Config, multi_query: bool = False) -> Architecture:
    c, positions = _gpt_core(cfg)
    H, I, d = c.hidden, c.intermediate, c.head_dim
    kv_heads = 1 if multi_query else c.heads
    qkv = H + 2 * kv_heads * d
    matrices = ((qkv, H, 1, False), (H, H, 1, False), (I, H, 1, False), (H, I, 1, False))
    other = qkv + H + I + H + 2 * 2 * H  # biases; ln_1 and ln_2 (weight, bias)
    layer = LayerSpec(matrices, other, CacheLayer(kv_heads, d, d, None))
    c = Core(c.vocab, H, I, c.layers, c.heads, kv_heads, d, positions, c.tie)
    outer = c.vocab * H + positions * H + 2 * H + head_params(c)  # wte, wpe, ln_f
    modules = ModuleLayout(
        base="transformer", layers_name="transformer.h", embed_name="transformer.wte",
        layer_class="GPTBigCodeBlock" if multi_query else "GPT2Block",
        before=(Module("transformer.wte", "embed", c.vocab * H), Module("transformer.wpe", "embed", positions * H),
                Module("transformer.drop", "embed", 0)),
        after=(Module("transformer.ln_f", "norm", 2 * H),),
        # GPT-BigCode keeps its causal mask as a buffer of the transformer module itself, which the
        # replayed accelerate walk does not model
        refusal="GPT-BigCode's layer-wise split is not modelled" if cfg.cfg["model_type"] == "gpt_bigcode" else None,
    )
    return finish(cfg, cfg.cfg["model_type"], c, [layer] * c.layers, outer, modules=modules)


def build_bigcode(cfg: Config) -> Architecture:
    return build_gpt2(cfg, multi_query=cfg.flag("multi_query", True))


def build_neox(cfg: Config) -> Architecture:
    # GPT-NeoX has no grouped-query attention (one fused qkv of 3 x heads): a stray num_key_value_heads
    # in a config changes nothing transformers builds
    c = replace(core(cfg), kv_heads=cfg.int("num_attention_heads"))
    H, I, d = c.hidden, c.intermediate, c.head_dim
    q = c.heads * d
    bias = cfg.flag("attention_bias", True)
    matrices = ((3 * q, H, 1, False), (H, q, 1, False), (I, H, 1, False), (H, I, 1, False))
    other = (3 * q + H) * bias + I + H + 2 * 2 * H
    layer = LayerSpec(matrices, other, CacheLayer(c.kv_heads, d, d, None))
    outer = c.vocab * H + 2 * H + head_params(c)  # embed_in, final_layer_norm, embed_out
    modules = ModuleLayout(
        base="gpt_neox", layers_name="gpt_neox.layers", embed_name="gpt_neox.embed_in", layer_class="GPTNeoXLayer",
        before=(Module("gpt_neox.embed_in", "embed", c.vocab * H), Module("gpt_neox.emb_dropout", "embed", 0)),
        after=(Module("gpt_neox.final_layer_norm", "norm", 2 * H),
               Module("gpt_neox.rotary_emb", "buffers", 0, rotary_buffers(int(d * _neox_rotary_pct(cfg))))),
    )
    return finish(cfg, "gpt_neox", c, [layer] * c.layers, outer, modules=modules)


def _neox_rotary_pct(cfg: Config) -> float:
    """Share of each head GPT-NeoX rotates: rope_parameters.partial_rotary_factor, else rotary_pct, else
    GPTNeoXConfig's default 0.25 (Pythia's value)."""
    return cfg.rotary_factor("rotary_pct", 0.25)


def build_starcoder2(cfg: Config) -> Architecture:
    c = core(cfg)
    H, I, d = c.hidden, c.intermediate, c.head_dim
    q, kv = c.heads * d, c.kv_heads * d
    bias = cfg.flag("use_bias", True)
    matrices = ((q, H, 1, False), (kv, H, 2, False), (H, q, 1, False), (I, H, 1, False), (H, I, 1, False))
    other = (q + 2 * kv + H + I + H) * bias + 2 * 2 * H
    layers = [LayerSpec(matrices, other, CacheLayer(c.kv_heads, d, d, w))
              for w in layer_windows(cfg, "all", c.layers)]
    outer = c.vocab * H + 2 * H + head_params(c)
    modules = model_modules(c, "Starcoder2DecoderLayer", norm_params=2 * H)
    return finish(cfg, "starcoder2", c, layers, outer, modules=modules)


_GPT2 = dict(vocab_size=50257, n_positions=1024, n_inner=None, n_embd=768, n_layer=12, n_head=12,
             tie_word_embeddings=True)
FAMILIES = {
    "gpt2": Family("gpt2", "GPT2Config", build_gpt2, _GPT2, "models/gpt2/modeling_gpt2.py"),
    "gpt_bigcode": Family("gpt_bigcode", "GPTBigCodeConfig", build_bigcode, dict(_GPT2, multi_query=True),
                          "models/gpt_bigcode/modeling_gpt_bigcode.py"),
    "gpt_neox": Family("gpt_neox", "GPTNeoXConfig", build_neox,
                       dict(vocab_size=50432, hidden_size=6144, intermediate_size=24576, num_hidden_layers=44,
                            num_attention_heads=64, max_position_embeddings=2048, tie_word_embeddings=False,
                            attention_bias=True),
                       "models/gpt_neox/modeling_gpt_neox.py"),
    "starcoder2": Family("starcoder2", "Starcoder2Config", build_starcoder2,
                         dict(vocab_size=49152, hidden_size=3072, intermediate_size=12288, num_hidden_layers=30,
                              num_attention_heads=24, num_key_value_heads=2, max_position_embeddings=4096,
                              sliding_window=None, tie_word_embeddings=True, use_bias=True),
                         "models/starcoder2/modeling_starcoder2.py"),
}
