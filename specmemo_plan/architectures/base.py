"""The per-layer quantities every architecture module produces, and the record it hands to models.py.

A family module (dense, moe, mla, legacy) reads one config.json and returns an `Architecture`: what each
decoder layer caches per token (`CacheLayer`), the quantisable weight matrices (`Matrix`), the routed
experts (`Experts`), and the exact parameter count as transformers builds the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CacheLayer:
    """What one decoder layer keeps per token, as transformers' cache stores it."""

    kv_heads: int  # heads cached (MLA: 1 — transformers 5.24 DeepseekV2/V3 cache the latent)
    k_dim: int  # elements per head of the "key" tensor (MLA: kv_lora_rank)
    v_dim: int  # elements per head of the "value" tensor (MLA: qk_rope_head_dim)
    window: int | None  # sliding-window layer: at most this many positions; None = full attention

    @property
    def elements_per_token(self) -> int:
        return self.kv_heads * (self.k_dim + self.v_dim)


@dataclass(frozen=True)
class Matrix:
    """A quantisable weight matrix of the decoder layers (embeddings, norms, biases stay 16-bit)."""

    out_features: int
    in_features: int
    count: int  # how many such matrices in the whole model
    expert: bool = False  # a routed expert's matrix (read only when a token is routed to it)
    layers: tuple[int, ...] = ()  # decoder layers that hold it (count // len(layers) in each)

    @property
    def params(self) -> int:
        return self.out_features * self.in_features * self.count

    @property
    def per_layer(self) -> int:
        """How many of these one holding layer has."""
        return self.count // len(self.layers) if self.layers else self.count


@dataclass(frozen=True)
class Experts:
    """Mixture of experts."""

    num_experts: int
    top_k: int
    moe_layers: int  # layers with routed experts
    expert_params: int  # parameters of ONE routed expert (all its matrices, biases)
    intermediate_size: int = 0  # one routed expert's inner width (activations)
    shared_intermediate_size: int = 0  # the always-active shared experts' inner width together (DeepSeek)


@dataclass(frozen=True)
class LatentAttention:
    """Multi-head latent attention (DeepSeek-V2/V3): the sizes its activations and FLOPs need."""

    q_lora_rank: int | None  # None: a plain q_proj
    kv_lora_rank: int  # the cached latent, per token
    qk_nope_head_dim: int
    qk_rope_head_dim: int  # the cached shared RoPE key, per token
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class Module:
    """A module outside the decoder layers that accelerate places whole (embedding, final norm, rotary)."""

    name: str  # as transformers names it ("model.embed_tokens")
    kind: str  # embed | norm | buffers
    params: int
    buffers: int = 0  # float32 buffer elements (rotary inv_freq and original_inv_freq, Gemma's embed_scale)


@dataclass(frozen=True)
class ModuleLayout:
    """The module tree accelerate walks: names in forward order, and the buffers it also counts."""

    base: str  # "model", "transformer", "gpt_neox"
    layers_name: str  # "model.layers"
    embed_name: str  # the module the output layer is tied to
    layer_class: str  # transformers' decoder layer class (accelerate's no_split_module_classes)
    before: tuple[Module, ...]  # modules before the decoder layers
    after: tuple[Module, ...]  # after them (the output layer "lm_head" follows)
    layer_buffers: tuple[int, ...] = ()  # float32 buffer elements per decoder layer (DeepSeek-V3's router bias)
    refusal: str | None = None  # why this model cannot be split layer-wise over devices


@dataclass(frozen=True)
class Architecture:
    """What a family module reads from a config: the fields of models.ModelShape it decides."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # dense MLP inner width (MoE: the dense layers', or the expert's when none)
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int  # the config's attention numbers, for display (the cache is `cache_layers`)
    head_dim: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    num_params: int  # as transformers builds it, tied weights once
    cache_layers: tuple[CacheLayer, ...]
    matrices: tuple[Matrix, ...]
    layer_params: tuple[int, ...]  # parameters of each decoder layer
    experts: Experts | None = None
    mtp_layers: int = 0  # multi-token-prediction layers in the checkpoint that transformers does not build
    latent: LatentAttention | None = None  # MLA families
    modules: ModuleLayout | None = None  # for layer-wise placement (None: not splittable)
    weight_source: str = "config formula"
    quant_method: str | None = None  # quantization_config.quant_method of the file
    notes: tuple[str, ...] = field(default_factory=tuple)  # stated assumptions and defaults used
    # parameters transformers keeps in float32 when the model loads in 16 bits (modeling_utils, 5.24):
    # `_keep_in_fp32_modules_strict` in fp16 and bf16, `_keep_in_fp32_modules` in fp16 only
    fp32_params_16bit: int = 0
    fp32_params_fp16: int = 0


def layer_range(first: int, last: int) -> tuple[int, ...]:
    """Decoder layer indices first .. last - 1."""
    return tuple(range(first, last))


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer as a family module describes it."""

    matrices: tuple[tuple[int, int, int, bool], ...]  # (out, in, how many in this layer, routed expert)
    other_params: int  # norms, biases, routers, sinks: parameters that stay 16-bit
    cache: CacheLayer

    @property
    def params(self) -> int:
        return sum(o * i * n for o, i, n, _ in self.matrices) + self.other_params


def assemble_layers(layers: list[LayerSpec]) -> tuple[tuple[Matrix, ...], tuple[int, ...], tuple[CacheLayer, ...]]:
    """(matrices grouped over the layers that hold them, parameters per layer, cache per layer)."""
    holders: dict[tuple[int, int, bool, int], list[int]] = {}
    for index, layer in enumerate(layers):
        per_layer: dict[tuple[int, int, bool], int] = {}
        for o, i, n, expert in layer.matrices:
            if not o * i * n:
                continue
            per_layer[(o, i, expert)] = per_layer.get((o, i, expert), 0) + n
        for (o, i, expert), n in per_layer.items():
            holders.setdefault((o, i, expert, n), []).append(index)
    matrices = tuple(
        Matrix(o, i, n * len(idx), expert, tuple(idx)) for (o, i, expert, n), idx in holders.items() if n
    )
    return matrices, tuple(layer.params for layer in layers), tuple(layer.cache for layer in layers)
