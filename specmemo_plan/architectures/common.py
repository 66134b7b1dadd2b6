"""What every family module shares: the family record, the config's core sizes, the final Architecture."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import SpecMemoError
from .base import Architecture, Experts, LayerSpec, Module, ModuleLayout, assemble_layers
from .fields import REQUIRED, Config

# Sizes a config.json must state: a default for these would be a model nobody asked about.
CORE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "n_embd", "n_layer", "n_head")


@dataclass(frozen=True)
class Family:
    """One model_type: its transformers config class, the defaults of the fields we read, its formula."""

    model_type: str
    config_class: str  # transformers' config class, named in the notes
    build: Callable[[Config], Architecture]
    defaults: dict = field(default_factory=dict)  # the config class's defaults (tests check them)
    source: str = ""  # transformers' modeling file the formula follows

    def config(self, cfg: dict, where: str, core_defaults: bool = False) -> Config:
        defaults = dict(self.defaults)
        if not core_defaults:
            for key in CORE_FIELDS:
                defaults.pop(key, None)
        return Config(cfg, where, self.config_class, defaults)


@dataclass(frozen=True)
class Core:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    max_positions: int
    tie: bool


def core(cfg: Config, *, intermediate: bool = True, head_dim: int | None = None) -> Core:
    """The sizes every decoder-only config states (transformers' field names)."""
    hidden = cfg.int("hidden_size")
    heads = cfg.int("num_attention_heads")
    vocab = cfg.int("vocab_size")
    layers = cfg.int("num_hidden_layers")
    inter = cfg.int("intermediate_size") if intermediate else 0
    kv_default = cfg.defaults.get("num_key_value_heads")
    kv_heads = cfg.int("num_key_value_heads", default=heads if kv_default is None else REQUIRED)
    if heads % kv_heads:
        raise SpecMemoError(f"{cfg.where}: {heads} attention heads are not a multiple of {kv_heads} KV heads")
    head_dim = head_dim or cfg.head_dim(hidden, heads)
    return Core(vocab, hidden, inter, layers, heads, kv_heads, head_dim, cfg.int("max_position_embeddings"),
                cfg.flag("tie_word_embeddings", cfg.defaults.get("tie_word_embeddings", False)))


def finish(cfg: Config, model_type: str, c: Core, layers: list[LayerSpec], outer_params: int, *,
           experts: Experts | None = None, mtp_layers: int = 0, latent=None,
           modules: ModuleLayout | None = None, notes: tuple[str, ...] = (), fp32_params_16bit: int = 0,
           fp32_params_fp16: int = 0) -> Architecture:
    """The Architecture of a decoder: `outer_params` are the embeddings, final norm and untied head."""
    matrices, layer_params, cache = assemble_layers(layers)
    return Architecture(
        model_type=model_type, vocab_size=c.vocab, hidden_size=c.hidden, intermediate_size=c.intermediate,
        num_layers=c.layers, num_attention_heads=c.heads, num_kv_heads=c.kv_heads, head_dim=c.head_dim,
        max_position_embeddings=c.max_positions, tie_word_embeddings=c.tie,
        num_params=outer_params + sum(layer_params), cache_layers=cache, matrices=matrices,
        layer_params=layer_params, experts=experts, mtp_layers=mtp_layers, latent=latent, modules=modules,
        notes=tuple(cfg.notes()) + tuple(notes), fp32_params_16bit=fp32_params_16bit,
        fp32_params_fp16=fp32_params_fp16,
    )


def head_params(c: Core) -> int:
    """The output layer: V x H unless tied to the embedding (bias-free in every family here)."""
    return 0 if c.tie else c.vocab * c.hidden


def rotary_buffers(rotary_dim: int, sets: int = 1) -> int:
    """float32 elements of a rotary embedding's inv_freq and original_inv_freq: ceil(dim / 2) each
    (torch.arange(0, dim, 2)), per set (Gemma-3 keeps one set per layer type)."""
    return 2 * ((rotary_dim + 1) // 2) * sets


def model_modules(c: Core, layer_class: str, *, norm_params: int | None = None, rotary_dim: int | None = None,
                  rotary_sets: int = 1, embed_buffers: int = 0, layer_buffers: tuple[int, ...] = ()) -> ModuleLayout:
    """The `model.embed_tokens, model.layers, model.norm, model.rotary_emb` tree of the Llama-style families."""
    return ModuleLayout(
        base="model", layers_name="model.layers", embed_name="model.embed_tokens", layer_class=layer_class,
        before=(Module("model.embed_tokens", "embed", c.vocab * c.hidden, embed_buffers),),
        after=(Module("model.norm", "norm", c.hidden if norm_params is None else norm_params),
               Module("model.rotary_emb", "buffers", 0, rotary_buffers(rotary_dim or c.head_dim, rotary_sets))),
        layer_buffers=layer_buffers,
    )
