"""`presets`: the model presets and the bundled models (and heads), each usable as --target/--draft."""

from __future__ import annotations

import click

from ..errors import SpecMemoError
from ..memory import kv_token_bytes
from ..models import BUNDLED_MODELS, list_presets, load_preset_config, load_shape
from ..render import planner as render
from .options import emit, json_option, user_errors

# A bundled head is sized by its layout as the draft of the bundled target it was trained for
# (specmemo_plan/drafts/smollm2-135m-eagle/README.md).
HEAD_TARGET = "bundled:smollm2-135m-instruct"


@click.command()
@json_option
@user_errors
def presets(as_json):
    """List the model presets (real config.json files, no weights: the engine runs them with random
    weights) and the bundled models (real weights, `bundled:NAME`), each usable as --target/--draft."""
    rows = [_preset_row(name, load_shape(name), "none (random)", load_preset_config(name).get("_specmemo_source", ""))
            for name in list_presets()]
    for name, (_, package, _) in BUNDLED_MODELS.items():
        ref = f"bundled:{name}"
        try:
            shape = _bundled_shape(ref)
            rows.append(_preset_row(ref, shape, "real (bundled)", shape.source))
        except SpecMemoError as exc:  # its package is not installed: say how to get it
            rows.append({"name": ref, "weights": "missing", "source": package, "note": str(exc)})
    emit({"presets": rows}, as_json, lambda: render.presets(rows))


def _bundled_shape(ref: str):
    """A bundled model's shape; a bundled EAGLE head's by its layout, as the draft of the bundled target."""
    from ..drafting.heads import head_shape
    from ..drafting.resolve import declared_method

    method = declared_method(ref)
    if method is None:
        return load_shape(ref)
    return head_shape(method, ref, load_shape(HEAD_TARGET))


def _preset_row(name: str, shape, weights: str, source: str) -> dict:
    return {
        "name": name, "weights": weights, "source": source, "model_type": shape.model_type,
        "num_params": shape.num_params, "num_layers": shape.num_layers, "num_kv_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim, "vocab_size": shape.vocab_size,
        "kv_bytes_per_token_fp16": kv_token_bytes(shape, "fp16"),
    }
