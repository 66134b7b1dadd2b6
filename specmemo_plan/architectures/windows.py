"""Which decoder layers attend to a sliding window, as transformers' config classes derive it.

transformers' StaticCache (cache_utils.get_layer_types_and_kwargs) reads `config.layer_types`; where a
config class does not set it, every layer whose config has a `sliding_window` is a sliding layer. The
config classes derive layer_types as follows (transformers 5.24, models/*/configuration_*.py):
- "all": Mistral, Mixtral, Phi-3, Starcoder2, Qwen3-MoE: every layer windowed when `sliding_window` is set
  ("qwen_moe": Qwen3-MoE keeps it only with `use_sliding_window`);
- "qwen": Qwen2, Qwen3: with `use_sliding_window`, layers i >= `max_window_layers` are windowed;
- "alternate": Gemma-2, GPT-OSS: layer i is windowed when (i + 1) % 2 != 0 (even layers);
- "pattern": Gemma-3: windowed unless (i + 1) % `sliding_window_pattern` == 0 (default 6: 5 local, 1 global);
- "nope": SmolLM3: with `use_sliding_window`, the layers without RoPE are windowed (none in its configs);
- "none": full attention everywhere (Llama, Gemma, GPT-2, ...; their attention has no window).
A `layer_types` list in the file wins over all of these, as it does in transformers.
"""

from __future__ import annotations

from ..errors import SpecMemoError
from .fields import Config

FULL, SLIDING = "full_attention", "sliding_attention"
# transformers' _LEGACY_LAYER_TYPE_REMAP (configuration_utils.py) renames "attention" to "full_attention".
LEGACY_NAMES = {"attention": FULL}
RULES = ("all", "qwen_moe", "qwen", "alternate", "pattern", "nope", "none")


def layer_windows(cfg: Config, rule: str, num_layers: int, no_rope: list[int] | None = None) -> tuple[int | None, ...]:
    """Each layer's window (None: full attention), from `layer_types` or the family's rule."""
    if cfg.has("per_layer_config"):
        raise SpecMemoError(f"{cfg.where}: per_layer_config (layers that differ) is not supported",
                            "the formula assumes one layout for all decoder layers")
    window = _window(cfg, rule)
    types = cfg.str_list("layer_types", num_layers)
    if types is not None:
        types = [LEGACY_NAMES.get(t, t) for t in types]
        unknown = sorted({t for t in types if t not in (FULL, SLIDING)})
        if unknown:
            raise SpecMemoError(
                f"{cfg.where}: layer type {unknown[0]!r} is not one this tool can size",
                f"known: {FULL}, {SLIDING}",
            )
        if SLIDING in types and window is None:
            raise SpecMemoError(f"{cfg.where}: layer_types has sliding layers but sliding_window is not set")
        return tuple(window if t == SLIDING else None for t in types)
    if rule == "none" or window is None:
        return (None,) * num_layers
    if rule in ("all", "qwen_moe"):
        return (window,) * num_layers
    if rule == "qwen":
        first = cfg.int("max_window_layers", minimum=0)
        return tuple(window if i >= first else None for i in range(num_layers))
    if rule == "alternate":
        return tuple(window if (i + 1) % 2 else None for i in range(num_layers))
    if rule == "pattern":
        if not cfg.has("sliding_window_pattern"):
            cfg.stated.append("sliding_window_pattern not in the file: Gemma3TextConfig's default 6 used")
        pattern = cfg.int("sliding_window_pattern", default=6)
        return tuple(window if (i + 1) % pattern else None for i in range(num_layers))
    if rule == "nope":
        return tuple(window if no_rope is not None and not no_rope[i] else None for i in range(num_layers))
    raise ValueError(rule)


def _window(cfg: Config, rule: str) -> int | None:
    """The config's sliding_window: the file's value (null = none), else the config class's default.
    Qwen-style configs state a window but keep it only with use_sliding_window (false in Qwen's files)."""
    applies = rule not in ("qwen", "nope", "qwen_moe") or cfg.flag("use_sliding_window", False)
    # validated where unused too (a number; 0 only where use_sliding_window turns it off)
    stated = cfg.opt_int("sliding_window", minimum=1 if applies else 0) if "sliding_window" in cfg.cfg else None
    if not applies:
        return None
    window = stated if "sliding_window" in cfg.cfg else cfg.opt_int("sliding_window")  # absent: the default, noted
    if rule == "none" and window is not None:
        cfg.stated.append(f"sliding_window {window} is in the file but {cfg.config_class}'s attention has no "
                          "window: full attention assumed")
        return None
    return window
