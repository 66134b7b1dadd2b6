"""Dense decoders of the Llama layout: q/k/v/o attention, gated MLP, RMSNorm.

Per layer (transformers' modeling_<type>.py; H hidden, I intermediate, q = heads * d, kv = kv_heads * d):
  attention  q (q, H), k (kv, H), v (kv, H), o (H, q)        [Phi-3: one qkv (q + 2kv, H)]
  MLP        gate (I, H), up (I, H), down (H, I)              [Phi-3: one gate_up (2I, H)]
  16-bit     RMSNorm weights and the biases the family has (table `VARIANTS`)
and around them the embedding V x H, the final norm H, and an output layer V x H unless tied.
Cache: K and V of kv_heads x d per token in every layer, windowed layers as `windows.layer_windows` says.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecMemoError
from .base import Architecture, CacheLayer, LayerSpec
from .common import Core, Family, core, finish, head_params, model_modules
from .fields import Config
from .windows import layer_windows


@dataclass(frozen=True)
class Variant:
    """How one family departs from Llama."""

    qkv_bias: str = "attention_bias"  # a config flag, "always" (Qwen2) or "never"
    o_bias: str = "attention_bias"
    mlp_bias: str = "never"  # a config flag or "never"
    qk_norm: str = ""  # "head": RMSNorm over head_dim (Qwen3, Gemma-3); "full": over q and kv (OLMo-2)
    layer_norms: int = 2  # RMSNorms per layer (Gemma-2/3: 4 around attention and MLP; OLMo-2: 2 after)
    fused: bool = False  # Phi-3: qkv_proj and gate_up_proj
    windows: str = "none"  # windows.RULES


VARIANTS = {
    "llama": Variant(mlp_bias="mlp_bias"),
    "mistral": Variant(qkv_bias="never", o_bias="never", windows="all"),
    "qwen2": Variant(qkv_bias="always", o_bias="never", windows="qwen"),
    "qwen3": Variant(qk_norm="head", windows="qwen"),
    "gemma": Variant(),
    "gemma2": Variant(layer_norms=4, windows="alternate"),
    "gemma3_text": Variant(qk_norm="head", layer_norms=4, windows="pattern"),
    "olmo2": Variant(qk_norm="full"),
    "granite": Variant(mlp_bias="mlp_bias"),
    "smollm3": Variant(mlp_bias="mlp_bias", windows="nope"),
    "phi3": Variant(qkv_bias="never", o_bias="never", fused=True, windows="all"),
}


def _flag(cfg: Config, rule: str) -> bool:
    if rule == "always":
        return True
    if rule == "never":
        return False
    return cfg.flag(rule, bool(cfg.defaults.get(rule, False)))


def dense_layer(cfg: Config, v: Variant, c: Core, window: int | None) -> LayerSpec:
    """One decoder layer of the Llama layout with the variant's fused matrices, biases and norms."""
    H, I, d = c.hidden, c.intermediate, c.head_dim
    q, kv = c.heads * d, c.kv_heads * d
    if v.fused:
        matrices = ((q + 2 * kv, H, 1, False), (H, q, 1, False), (2 * I, H, 1, False), (H, I, 1, False))
    else:
        matrices = ((q, H, 1, False), (kv, H, 2, False), (H, q, 1, False), (I, H, 2, False), (H, I, 1, False))
    other = v.layer_norms * H
    other += (q + 2 * kv) * _flag(cfg, v.qkv_bias) + H * _flag(cfg, v.o_bias)
    other += (2 * I + H) * _flag(cfg, v.mlp_bias)
    other += {"": 0, "head": 2 * d, "full": q + kv}[v.qk_norm]
    return LayerSpec(matrices, other, CacheLayer(c.kv_heads, d, d, window))


def _no_rope(cfg: Config, c: Core) -> list[int] | None:
    """SmolLM3's no_rope_layers: 1 = RoPE, 0 = none (every `no_rope_layer_interval`-th layer by default).
    No RoPE changes no cache size: the layer caches K and V as any other."""
    stated = cfg.int_list("no_rope_layers", c.layers)
    if stated is not None:
        return stated
    interval = cfg.int("no_rope_layer_interval")
    return [int((i + 1) % interval != 0) for i in range(c.layers)]


def build_dense(cfg: Config, model_type: str) -> Architecture:
    v = VARIANTS[model_type]
    c = core(cfg)
    no_rope = _no_rope(cfg, c) if model_type == "smollm3" else None
    windows = layer_windows(cfg, v.windows, c.layers, no_rope)
    layers = [dense_layer(cfg, v, c, w) for w in windows]
    outer = c.vocab * c.hidden + c.hidden + head_params(c)  # embedding, final norm, head
    notes = ()
    if model_type == "smollm3" and no_rope and not all(no_rope):
        notes = (f"{no_rope.count(0)} of {c.layers} layers use no RoPE (NoPE): same KV cache as the others",)
    if model_type == "gemma3_text" and cfg.flag("use_bidirectional_attention", False):
        raise SpecMemoError(f"{cfg.where}: use_bidirectional_attention is an encoder (EmbeddingGemma), not a causal LM")
    sets = len({w is None for w in windows}) if model_type == "gemma3_text" else 1  # one per layer type
    modules = model_modules(c, LAYER_CLASSES[model_type], rotary_dim=_rotary_dim(cfg, c, model_type),
                            rotary_sets=sets, embed_buffers=1 if model_type.startswith("gemma") else 0)
    return finish(cfg, model_type, c, layers, outer, modules=modules, notes=notes)


def _rotary_dim(cfg: Config, c: Core, model_type: str) -> int:
    """Phi-3/Phi-4-mini rotate part of each head: partial_rotary_factor (top level or in rope_parameters)."""
    if model_type != "phi3":
        return c.head_dim
    return int(c.head_dim * cfg.rotary_factor("partial_rotary_factor", 1.0))


_LLAMA = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
              num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048,
              tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
DEFAULTS = {
    "llama": _LLAMA,
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                    sliding_window=4096, tie_word_embeddings=False),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768,
                  sliding_window=4096, max_window_layers=28, tie_word_embeddings=False),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=32768,
                  sliding_window=4096, max_window_layers=28, tie_word_embeddings=False, attention_bias=False),
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, head_dim=256, max_position_embeddings=8192,
                  tie_word_embeddings=True, attention_bias=False),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                   sliding_window=4096, tie_word_embeddings=True, attention_bias=False),
    "gemma3_text": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                        max_position_embeddings=131072, sliding_window=4096, tie_word_embeddings=True,
                        attention_bias=False),
    "olmo2": dict({k: v for k, v in _LLAMA.items() if k != "mlp_bias"}, vocab_size=50304),
    "granite": _LLAMA,
    "smollm3": dict(vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                    num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=32768,
                    sliding_window=None, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
                    no_rope_layer_interval=4),
    "phi3": dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=4096,
                 sliding_window=None, tie_word_embeddings=False),
}

LAYER_CLASSES = {
    "llama": "LlamaDecoderLayer", "mistral": "MistralDecoderLayer", "qwen2": "Qwen2DecoderLayer",
    "qwen3": "Qwen3DecoderLayer", "gemma": "GemmaDecoderLayer", "gemma2": "Gemma2DecoderLayer",
    "gemma3_text": "Gemma3DecoderLayer", "olmo2": "Olmo2DecoderLayer", "granite": "GraniteDecoderLayer",
    "smollm3": "SmolLM3DecoderLayer", "phi3": "Phi3DecoderLayer",
}
CONFIG_CLASSES = {
    "llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
    "gemma": "GemmaConfig", "gemma2": "Gemma2Config", "gemma3_text": "Gemma3TextConfig", "olmo2": "Olmo2Config",
    "granite": "GraniteConfig", "smollm3": "SmolLM3Config", "phi3": "Phi3Config",
}


def _builder(model_type: str):
    return lambda cfg: build_dense(cfg, model_type)


FAMILIES = {
    t: Family(t, CONFIG_CLASSES[t], _builder(t), DEFAULTS[t], f"models/{t.split('_')[0]}/modeling_{t.split('_')[0]}.py")
    for t in VARIANTS
}
