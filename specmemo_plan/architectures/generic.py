"""Any other model_type transformers knows: its meta-device build gives the exact parameter count.

The slow path (it imports torch and transformers, ~seconds): `AutoModelForCausalLM.from_config` under
`torch.device("meta")` allocates no memory, so every parameter's shape is exact. The cache comes from the
config the way transformers' StaticCache reads it (cache_utils.get_layer_types_and_kwargs: full and
sliding layers only), with K and V of num_key_value_heads x head_dim, which holds only for standard
attention: every decoder layer must have k_proj and v_proj of exactly that width, else the model is refused.
Quantisable matrices: the decoder layers' nn.Linear weights; MoE expert tensors (3D parameters under an
`experts` module) count as routed experts with the config's num_experts_per_tok.
"""

from __future__ import annotations

import importlib.util

from ..errors import SpecMemoError
from .base import Architecture, CacheLayer, Experts, LayerSpec, assemble_layers

SOURCE = "transformers meta-device build (generic path, slower)"


def from_transformers(cfg: dict, where: str, supported: tuple[str, ...]) -> Architecture:
    model_type = cfg.get("model_type")
    refusal = SpecMemoError(f"{where}: model_type {model_type!r} is not supported",
                            "supported: " + ", ".join(supported))
    if not isinstance(model_type, str) or importlib.util.find_spec("transformers") is None:
        raise refusal
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.cache_utils import get_layer_types_and_kwargs

    try:
        config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    except (ValueError, KeyError):
        raise refusal from None
    except Exception as exc:  # transformers' strict config validation raises several types
        raise SpecMemoError(f"{where}: transformers refuses this config: {str(exc).splitlines()[0]}") from None
    text = config.get_text_config(decoder=True)
    for name in ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size"):
        value = getattr(text, name, None)
        if name == "num_attention_heads" and value is None:
            raise SpecMemoError(f"{where}: {model_type!r} has no attention heads (num_attention_heads): only "
                                "attention models can be sized", "supported: " + ", ".join(supported))
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise SpecMemoError(f"{where}: field '{name}' must be a positive integer, got {value!r}")
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        if type(config) not in AutoModelForCausalLM._model_mapping:
            raise SpecMemoError(f"{where}: model_type {model_type!r} is not supported (transformers has no causal "
                                "LM for it)", "supported: " + ", ".join(supported)) from None
        raise SpecMemoError(f"{where}: transformers cannot build {model_type!r} from this config: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'ValueError'}") from None
    except Exception as exc:  # a config transformers accepts but cannot build (its own bugs included)
        raise SpecMemoError(f"{where}: transformers cannot build {model_type!r} from this config: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    layers_module = _decoder_layers(model)
    if layers_module is None:
        raise SpecMemoError(f"{where}: cannot find the decoder layers of {type(model).__name__}")
    types, kwargs = get_layer_types_and_kwargs(text)
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    specs = []
    for index, (layer, layer_type, kw) in enumerate(zip(layers_module, types, kwargs)):
        if layer_type not in ("full_attention", "sliding_attention"):
            raise SpecMemoError(f"{where}: layer {index} is {layer_type!r}: only full and sliding attention "
                                "layers can be sized")
        _check_standard_attention(layer, kv_heads * head_dim, where, index)
        matrices, other = _layer_weights(layer)
        window = kw.get("sliding_window") if layer_type == "sliding_attention" else None
        specs.append(LayerSpec(matrices, other, CacheLayer(kv_heads, head_dim, head_dim, window)))
    total = sum(p.numel() for p in model.parameters())
    matrices, layer_params, cache = assemble_layers(specs)
    experts = _experts(model, text, len(specs))
    tie = bool(getattr(config, "tie_word_embeddings", False))
    return Architecture(
        model_type=model_type, vocab_size=text.vocab_size, hidden_size=text.hidden_size,
        intermediate_size=getattr(text, "intermediate_size", 0) or 0, num_layers=len(specs),
        num_attention_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=getattr(text, "max_position_embeddings", 0) or 0, tie_word_embeddings=tie,
        num_params=total, cache_layers=cache, matrices=matrices, layer_params=layer_params, experts=experts,
        weight_source=SOURCE,
        notes=(f"{model_type}: sized by building {type(model).__name__} on the meta device (slower generic path)",),
    )


def _decoder_layers(model):
    """The longest nn.ModuleList of the model: its decoder layers."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists, key=len) if lists else None


def _check_standard_attention(layer, kv_width: int, where: str, index: int) -> None:
    import torch

    named = dict(layer.named_modules())
    k = next((m for n, m in named.items() if n.endswith("k_proj")), None)
    v = next((m for n, m in named.items() if n.endswith("v_proj")), None)
    if not (isinstance(k, torch.nn.Linear) and isinstance(v, torch.nn.Linear)
            and k.out_features == kv_width == v.out_features):
        raise SpecMemoError(f"{where}: layer {index}'s attention is not standard (k_proj/v_proj of "
                            f"num_key_value_heads x head_dim = {kv_width}): its cache cannot be sized")


def _layer_weights(layer) -> tuple[tuple, int]:
    """(matrices, other parameters) of one decoder layer: Linear weights and 3D expert tensors are matrices."""
    import torch

    matrices, counted = [], set()
    for name, module in layer.named_modules():
        if isinstance(module, torch.nn.Linear):
            matrices.append((module.out_features, module.in_features, 1, False))
            counted.add(id(module.weight))
    for name, p in layer.named_parameters():
        if p.dim() == 3 and "experts" in name:
            matrices.append((p.shape[1], p.shape[2], p.shape[0], True))
            counted.add(id(p))
    other = sum(p.numel() for p in layer.parameters() if id(p) not in counted)
    return tuple(matrices), other


def _experts(model, text, num_layers: int) -> Experts | None:
    tensors = [(n, p) for n, p in model.named_parameters() if p.dim() == 3 and "experts" in n]
    if not tensors:
        return None
    num_experts = tensors[0][1].shape[0]
    moe_layers = len({n.split(".experts")[0] for n, _ in tensors})
    per_expert = sum(p.numel() for _, p in tensors) // (num_experts * moe_layers)
    top_k = getattr(text, "num_experts_per_tok", None)
    if not top_k:
        raise SpecMemoError(f"{text.model_type}: experts without num_experts_per_tok cannot be sized for throughput")
    inner = getattr(text, "moe_intermediate_size", None) or getattr(text, "intermediate_size", 0) or 0
    shared = getattr(text, "shared_expert_intermediate_size", None) or 0
    return Experts(num_experts, top_k, moe_layers, per_expert, intermediate_size=inner, shared_intermediate_size=shared)
