"""Placement units of a model: the modules accelerate places whole, in forward order, with their bytes.

Names and order are those transformers builds (`model.embed_tokens`, `model.layers.3`, `lm_head`, ...), as each
family states them (`ModelShape.modules`, from specmemo_plan/architectures); parameter counts are the
family's (`ModelShape.layer_params` per decoder layer), bytes `memory.weight_bytes` (quantised formats quantise
only the decoder layers' matrices). accelerate's `compute_module_sizes` also counts buffers (the rotary
`inv_freq` / `original_inv_freq` float32 buffers, Gemma's `embed_scale`, DeepSeek-V3's router bias):
`accelerate_bytes`. See docs/placement.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..architectures import dense, moe
from ..errors import SpecMemoError
from ..memory import FLOAT_DTYPES, compute_dtype, dtype_bytes, quantised_bytes, weight_bytes
from ..models import Matrix, ModelShape


# transformers' decoder layer class per model_type: what accelerate must not split (tests check each against
# the model's _no_split_modules).
NO_SPLIT_CLASSES = {
    **dense.LAYER_CLASSES, **moe.LAYER_CLASSES, "gpt2": "GPT2Block", "gpt_bigcode": "GPTBigCodeBlock",
    "gpt_neox": "GPTNeoXLayer", "starcoder2": "Starcoder2DecoderLayer", "deepseek_v2": "DeepseekV2DecoderLayer",
    "deepseek_v3": "DeepseekV3DecoderLayer",
}


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


def layer_weight_bytes(model: ModelShape, index: int, dtype: str) -> int:
    """Bytes of decoder layer `index` in `dtype`: its matrices quantised (a quantised dtype) and the rest
    (norms, biases, routers) in fp16, as memory.weight_bytes counts them."""
    params = model.layer_params[index]
    if dtype in FLOAT_DTYPES:
        return params * dtype_bytes(dtype)
    mine = [Matrix(m.out_features, m.in_features, m.per_layer, m.expert) for m in model.matrices if index in m.layers]
    matrix = sum(m.params for m in mine)
    return quantised_bytes(mine, dtype) + (params - matrix) * dtype_bytes("fp16")


def fp32_kept_layer_bytes(model: ModelShape, index: int | None, dtype: str) -> int:
    """memory.fp32_kept_bytes of one decoder layer (None: the final norm). The families that keep parameters
    in float32 keep a router per MoE layer (DeepSeek, strict) or the norms (GPT-OSS: two per layer + the
    final one, fp16 only), so the shares follow those modules."""
    if dtype not in ("fp16", "bf16") and dtype in FLOAT_DTYPES:
        return 0
    load = "fp16" if dtype not in FLOAT_DTYPES else dtype
    per_param = 4 - dtype_bytes(load)
    extra = 0
    if model.fp32_params_16bit and index is not None:
        moe = sorted({i for m in model.matrices if m.expert for i in m.layers})
        extra += model.fp32_params_16bit // len(moe) if index in moe else 0
    if model.fp32_params_fp16 and load == "fp16":
        H = model.hidden_size
        extra += H if index is None else (model.fp32_params_fp16 - H) // model.num_layers
    return extra * per_param


def layout(model: ModelShape, dtype: str) -> Layout:
    """Placement units of `model` with weights stored in `dtype`, names and order as transformers builds them."""
    mods = model.modules
    if mods is None or mods.refusal:
        reason = mods.refusal if mods is not None else f"model_type {model.model_type!r} has no known module layout"
        raise SpecMemoError(f"{model.name} cannot be split over devices: {reason}", "plan it on one device")
    if dtype == "stored":  # the headers give bytes per tensor, not per placement unit yet
        raise SpecMemoError(f"{model.name}: --dtype stored is sized on one device only",
                            "plan it on one device, or give the dtype the weights load in (fp16, bf16, ...)")
    V, H = model.vocab_size, model.hidden_size
    float_weights = dtype in FLOAT_DTYPES
    b = dtype_bytes(dtype) if float_weights else dtype_bytes("fp16")  # bytes of the non-quantised parts
    buffer_b = min(dtype_bytes(compute_dtype(dtype)), 4)  # accelerate sizes float32 buffers in the load dtype
    tied = model.tie_word_embeddings
    head_params = 0 if tied else V * H
    units = [Unit(m.name, m.kind, None, m.params, m.params * b, m.params * b + m.buffers * buffer_b)
             for m in mods.before]
    buffers = mods.layer_buffers or (0,) * model.num_layers
    for i in range(model.num_layers):
        nbytes = layer_weight_bytes(model, i, dtype) + fp32_kept_layer_bytes(model, i, dtype)
        acc = (model.layer_params[i] * b if float_weights else nbytes) + buffers[i] * buffer_b
        units.append(Unit(f"{mods.layers_name}.{i}", "layer", i, model.layer_params[i], nbytes, acc))
    units += [Unit(m.name, m.kind, None, m.params,
                   m.params * b + (fp32_kept_layer_bytes(model, None, dtype) if m.kind == "norm" else 0),
                   m.params * b + m.buffers * buffer_b)
              for m in mods.after]
    units.append(Unit("lm_head", "head", None, head_params, head_params * b, head_params * b))
    if sum(u.params for u in units) != model.num_params:
        raise SpecMemoError(f"{model.name}: its modules do not add up to its {model.num_params} parameters")
    assert sum(u.weight_bytes for u in units) == weight_bytes(model, dtype)
    return Layout(tuple(units), mods.base, mods.layers_name, tied, mods.embed_name)
