"""From what the user gave (a target, maybe a --draft, maybe --draft-method) to (method, draft shape, ref).

The method is --draft-method when given, else what the --draft file declares (methods.recognise), else
draft-model with a draft and none without. The plan stores the method and the draft's reference; checking
a plan resolves the same way (plan_check.py), so the head's shape is rebuilt, never trusted from the file.
"""

from __future__ import annotations

from ..errors import SpecMemoError
from ..models import ModelShape, load_shape
from .heads import head_shape, read_head_config
from .methods import HEAD_METHODS, get_method, recognise


def declared_method(draft_ref: str) -> str | None:
    """The method a --draft's config.json declares, or None (a model config, or no readable config)."""
    try:
        cfg = read_head_config(draft_ref)
    except SpecMemoError:
        return None  # a .gguf, bundled:NAME, ...: load_shape says what is wrong with it
    return recognise(cfg) if isinstance(cfg, dict) else None


def resolve_draft(target_ref: str, target: ModelShape, draft_ref: str | None, method: str | None,
                  head_embedding: str | None = None) -> tuple[str, ModelShape | None, str | None]:
    """(method, the draft's ModelShape or None, the draft reference a plan stores)."""
    if method is None:
        method = (declared_method(draft_ref) or "draft-model") if draft_ref else "none"
    spec = get_method(method)
    if method in ("ngram", "none", "mtp") and draft_ref and not (method == "mtp" and draft_ref == target_ref):
        why = "reads the target's own MTP layers" if method == "mtp" else "has no draft model"
        raise SpecMemoError(f"--draft-method {method} {why}, but --draft {draft_ref} is given", "drop --draft")
    if spec.needs_draft and not draft_ref:
        raise SpecMemoError(f"--draft-method {method} needs --draft",
                            "give the draft model" if method == "draft-model" else "give the head's config.json")
    if method == "draft-model":
        return method, load_shape(draft_ref), draft_ref
    if method in HEAD_METHODS:
        ref = target_ref if method == "mtp" else draft_ref
        return method, head_shape(method, ref, target, head_embedding or "shared"), ref
    return method, None, None


def medusa_heads(draft: ModelShape) -> int:
    """Heads of a Medusa shape (heads.medusa_shape keeps one layer_params entry per head)."""
    return len(draft.layer_params)


def check_method_limits(method: str, draft: ModelShape | None, knobs) -> None:
    """What the knobs alone cannot check: Medusa's depth within its heads."""
    if method == "medusa" and knobs.draft_length and knobs.tree.depth > medusa_heads(draft):
        raise SpecMemoError(f"the Medusa head set has {medusa_heads(draft)} heads: a chain or tree of depth "
                            f"{knobs.tree.depth} needs as many", f"use --draft-length (or --tree-depth) "
                            f"{medusa_heads(draft)} or less")
