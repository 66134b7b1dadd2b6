"""The model families the calculator sizes by formula, and the one entry point that reads a config.

`from_config(cfg, where)` returns an `Architecture` (base.py): the family's formula when its model_type is
known (pure Python, fast), else transformers' meta-device build (generic.py: slower, and only where
transformers is installed and the attention is standard), else a one-line refusal naming the supported types.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import SpecMemoError
from . import dense, legacy, mla, moe
from .base import Architecture, CacheLayer, Experts, LatentAttention, Matrix
from .common import Family
from .fields import Config, quant_method

FAMILIES: dict[str, Family] = {**dense.FAMILIES, **legacy.FAMILIES, **moe.FAMILIES, **mla.FAMILIES}
# gemma3 (the multimodal checkpoint): its text_config is a gemma3_text config.
SUPPORTED_MODEL_TYPES = tuple(sorted(FAMILIES)) + ("gemma3",)

__all__ = ["Architecture", "CacheLayer", "Experts", "LatentAttention", "Matrix", "FAMILIES",
           "SUPPORTED_MODEL_TYPES", "from_config"]


def from_config(cfg: dict, where: str) -> Architecture:
    """The Architecture of a config.json dict (see the module docstring)."""
    if not isinstance(cfg, dict):
        raise SpecMemoError(f"{where}: expected a JSON object")
    model_type = cfg.get("model_type")
    method = quant_method(Config(cfg, where, ""))
    if model_type == "gemma3":
        arch = _gemma3_text(cfg, where)
    elif model_type in FAMILIES:
        family = FAMILIES[model_type]
        arch = family.build(family.config(cfg, where))
    else:
        from . import generic

        arch = generic.from_transformers(cfg, where, SUPPORTED_MODEL_TYPES)
    if method:
        arch = replace(arch, quant_method=method, notes=arch.notes + (
            f"the checkpoint is quantised ({method}); sizes here follow the weight dtype chosen, "
            "not its stored format",))
    return arch


def _gemma3_text(cfg: dict, where: str) -> Architecture:
    """Gemma-3's text part (Gemma3ForCausalLM of its text_config); Google's files leave most sizes to
    Gemma3TextConfig's defaults, which are then used and stated. The vision tower is not counted."""
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        raise SpecMemoError(f"{where}: a gemma3 config needs a text_config object")
    text = dict(text, model_type="gemma3_text")
    family = FAMILIES["gemma3_text"]
    arch = family.build(family.config(text, f"{where} (text_config)", core_defaults=True))
    return replace(arch, notes=arch.notes + ("gemma3: the text model only; the vision tower is not counted",))
