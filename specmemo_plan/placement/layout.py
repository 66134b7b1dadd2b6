"""Placement units of a model: the modules accelerate places whole, in forward order, with their bytes.

Names and order are those transformers builds (`model.embed_tokens`, `model.layers.3`, `lm_head`, ...);
parameter counts follow `models.count_parameters`, bytes `memory.weight_bytes` (quantised formats
quantise only the decoder layers' matrices). accelerate's `compute_module_sizes` also counts buffers
(the rotary `inv_freq` / `original_inv_freq` float32 buffers, Gemma's `embed_scale`): `accelerate_bytes`.
See docs/placement.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecMemoError
from ..memory import FLOAT_DTYPES, compute_dtype, dtype_bytes, weight_bytes
from ..models import LLAMA_LIKE, ModelShape


# transformers' decoder layer class per model_type: what accelerate must not split.
NO_SPLIT_CLASSES = {
    "llama": "LlamaDecoderLayer",
    "mistral": "MistralDecoderLayer",
    "qwen2": "Qwen2DecoderLayer",
    "gemma": "GemmaDecoderLayer",
    "gpt2": "GPT2Block",
    "gpt_neox": "GPTNeoXLayer",
}
# GPT-NeoX rotates only part of each head (transformers' GPTNeoXConfig default rotary_pct = 0.25, which
# Pythia uses); ModelShape does not carry it, so the size of its inv_freq buffers assumes it.
NEOX_ROTARY_PCT = 0.25


# ----------------------------------------------------------------------------- module layout


@dataclass(frozen=True)
class Unit:
    """One module accelerate places as a whole (a leaf or a decoder layer), in forward order."""

    name: str  # module name as transformers builds it ("model.layers.3")
    kind: str  # embed | layer | norm | buffers | head
    layer: int | None  # decoder layer index
    params: int  # parameters (a tied lm_head: 0, the embedding holds them)
    weight_bytes: int  # parameter bytes by our memory model (sums to memory.weight_bytes)
    accelerate_bytes: int  # bytes accelerate's compute_module_sizes counts (adds buffers)


@dataclass(frozen=True)
class Layout:
    """A model's placement units and the module tree accelerate walks."""

    units: tuple[Unit, ...]
    base: str  # "model", "transformer", "gpt_neox"
    layers_name: str  # "model.layers", "transformer.h", "gpt_neox.layers"
    tied: bool  # lm_head shares the embedding matrix
    embed_name: str  # the module whose weight lm_head is tied to

    @property
    def head(self) -> Unit:
        return self.units[-1]


def _layer_params(model: ModelShape, non_layer_params: int) -> int:
    body = model.num_params - non_layer_params
    if body % model.num_layers:
        raise SpecMemoError(f"{model.name}: parameter count does not divide into {model.num_layers} equal layers")
    return body // model.num_layers


def layout(model: ModelShape, dtype: str) -> Layout:
    """Placement units of `model` with weights stored in `dtype`, names and order as transformers builds them.

    Parameter counts follow models.count_parameters; quantised formats quantise only the decoder layers'
    matrices (memory.weight_bytes), so the per-layer bytes are the remainder after the 16-bit parts.
    """
    V, H, L = model.vocab_size, model.hidden_size, model.num_layers
    float_weights = dtype in FLOAT_DTYPES
    b = dtype_bytes(dtype) if float_weights else dtype_bytes("fp16")  # bytes of the non-quantised parts
    acc_b = dtype_bytes(compute_dtype(dtype))  # accelerate's dtype for the buffers
    tied = model.tie_word_embeddings
    head_params = 0 if tied else V * H
    if model.model_type in LLAMA_LIKE:
        base, layers_name, embed = "model", "model.layers", "model.embed_tokens"
        rotary = 2 * (model.head_dim // 2)  # inv_freq and original_inv_freq, float32
        pre = [(embed, "embed", V * H, V * H * b + (acc_b if model.model_type == "gemma" else 0))]
        post = [("model.norm", "norm", H), ("model.rotary_emb", "buffers", 0)]
        rotary_bytes = rotary * min(acc_b, 4)
    elif model.model_type == "gpt2":
        base, layers_name, embed = "transformer", "transformer.h", "transformer.wte"
        P = model.max_position_embeddings
        pre = [(embed, "embed", V * H, V * H * b), ("transformer.wpe", "embed", P * H, P * H * b),
               ("transformer.drop", "embed", 0, 0)]
        post = [("transformer.ln_f", "norm", 2 * H)]
        rotary_bytes = 0
    elif model.model_type == "gpt_neox":
        base, layers_name, embed = "gpt_neox", "gpt_neox.layers", "gpt_neox.embed_in"
        pre = [(embed, "embed", V * H, V * H * b), ("gpt_neox.emb_dropout", "embed", 0, 0)]
        post = [("gpt_neox.final_layer_norm", "norm", 2 * H), ("gpt_neox.rotary_emb", "buffers", 0)]
        rotary_bytes = 2 * (int(model.head_dim * NEOX_ROTARY_PCT) // 2) * min(acc_b, 4)
    else:  # models.SUPPORTED_MODEL_TYPES keeps this unreachable
        raise SpecMemoError(f"{model.name}: model_type {model.model_type!r} cannot be split")
    non_layer = sum(p for _, _, p, _ in pre) + sum(p for _, _, p in post) + head_params
    per_layer_params = _layer_params(model, non_layer)
    non_layer_bytes = non_layer * b
    layer_total = weight_bytes(model, dtype) - non_layer_bytes
    if layer_total % L:
        raise SpecMemoError(f"{model.name}: {dtype} weights do not divide into {L} equal layers")
    layer_bytes = layer_total // L
    layer_acc = per_layer_params * b if float_weights else layer_bytes
    units = [Unit(name, kind, None, p, p * b, acc) for name, kind, p, acc in pre]
    units += [Unit(f"{layers_name}.{i}", "layer", i, per_layer_params, layer_bytes, layer_acc) for i in range(L)]
    for name, kind, p in post:
        acc = p * b + (rotary_bytes if kind == "buffers" else 0)
        units.append(Unit(name, kind, None, p, p * b, acc))
    units.append(Unit("lm_head", "head", None, head_params, head_params * b, head_params * b))
    assert sum(u.weight_bytes for u in units) == weight_bytes(model, dtype)
    return Layout(tuple(units), base, layers_name, tied, embed)

