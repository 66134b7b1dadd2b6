"""Reading config.json fields: typed, validated, with transformers' defaults stated when used.

Every wrong field is one line naming it (a string where a number belongs, a zero or negative size, a
hidden size that does not divide into heads). A field the file does not state is taken from the family's
transformers config class only where the family lists a default, and the shape then says so
(`Config.notes`); the core sizes have no default unless the family allows one (Gemma-3's text_config
relies on Gemma3TextConfig's defaults, as Google's files do).
"""

from __future__ import annotations

from ..errors import SpecMemoError

REQUIRED = object()  # no default: the field must be in the file

# quantization_config.quant_method values transformers 5.24 knows (utils/quantization_config.py,
# QuantizationMethod). The shape records the method; its bytes come from the checkpoint's headers, not here.
KNOWN_QUANT_METHODS = (
    "bitsandbytes", "gptq", "awq", "aqlm", "vptq", "quanto", "eetq", "higgs", "hqq", "compressed-tensors",
    "fbgemm_fp8", "torchao", "gguf", "bitnet", "spqr", "fp8", "quark", "fp_quant", "auto-round", "mxfp4",
    "nvfp4", "mxfp8", "metal", "fouroversix", "sinq", "gemma",
)


class Config:
    """A config dict with typed getters. `defaults`: the family's transformers config-class defaults."""

    def __init__(self, cfg: dict, where: str, config_class: str, defaults: dict | None = None):
        if not isinstance(cfg, dict):
            raise SpecMemoError(f"{where}: expected a JSON object")
        self.cfg, self.where, self.config_class = cfg, where, config_class
        self.defaults = defaults or {}
        self.defaulted: dict[str, object] = {}  # fields taken from the config class, for the note
        self.stated: list[str] = []  # other assumptions, one line each

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def _raw(self, keys: tuple[str, ...], default):
        for key in keys:
            if self.cfg.get(key) is not None:
                return key, self.cfg[key]
        name = keys[0]
        if default is REQUIRED:
            default = self.defaults.get(name, REQUIRED)
            if default is REQUIRED:
                raise SpecMemoError(f"{self.where}: missing field '{name}'", "is this a causal LM config.json?")
            if default is not None:
                self.defaulted[name] = default
        return name, default

    def int(self, *keys: str, default=REQUIRED, minimum: int = 1) -> int:
        """A whole number >= minimum (1: a size). `default` REQUIRED: the file or the family's default."""
        name, value = self._raw(keys, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise SpecMemoError(f"{self.where}: field '{name}' must be an integer, got {value!r}")
        if value < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise SpecMemoError(f"{self.where}: field '{name}' must be {kind}, got {value!r}")
        return value

    def opt_int(self, *keys: str, minimum: int = 1) -> int | None:
        """A whole number >= minimum, or None where the file says null (the config's 'not used'); absent,
        the family's default (stated when it is a number)."""
        if not any(key in self.cfg for key in keys) and self.defaults.get(keys[0]) is not None:
            return self.int(*keys, minimum=minimum)
        return self.int(*keys, default=None, minimum=minimum)

    def flag(self, key: str, default: bool) -> bool:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SpecMemoError(f"{self.where}: field '{key}' must be true or false, got {value!r}")
        return value

    def rotary_factor(self, key: str, default: float) -> float:
        """A share of each head that is rotated: rope_parameters.partial_rotary_factor when the config nests
        it there (transformers 5.x), else the top-level `key`; a number in (0, 1]."""
        rope = self.cfg.get("rope_parameters")
        if isinstance(rope, dict) and rope.get("partial_rotary_factor") is not None:
            value, name = rope["partial_rotary_factor"], "rope_parameters.partial_rotary_factor"
        else:
            value, name = self.cfg.get(key), key
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise SpecMemoError(f"{self.where}: field '{name}' must be a positive number at most 1, got {value!r}")
        return float(value)

    def number(self, key: str, default: float) -> float:
        value = self.cfg.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1e9:
            raise SpecMemoError(f"{self.where}: field '{key}' must be a positive number, got {value!r}")
        return float(value)

    def int_list(self, key: str, length: int, minimum: int = 0) -> list[int] | None:
        value = self.cfg.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise SpecMemoError(f"{self.where}: field '{key}' must be a list of integers, got {value!r:.60}")
        if len(value) != length or any(v < minimum for v in value):
            raise SpecMemoError(f"{self.where}: field '{key}' must list {length} integers >= {minimum}")
        return value

    def index_list(self, key: str, bound: int) -> list[int]:
        """A list of layer indices 0 .. bound-1 (absent: empty)."""
        value = self.cfg.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < bound
                                                  for v in value):
            raise SpecMemoError(f"{self.where}: field '{key}' must list layer indices 0 .. {bound - 1}, got {value!r:.60}")
        return value

    def str_list(self, key: str, length: int) -> list[str] | None:
        value = self.cfg.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecMemoError(f"{self.where}: field '{key}' must be a list of strings, got {value!r:.60}")
        if len(value) != length:
            raise SpecMemoError(f"{self.where}: field '{key}' lists {len(value)} layers, the model has {length}")
        return value

    def head_dim(self, hidden: int, heads: int, key: str = "head_dim") -> int:
        """The config's head_dim, else hidden / heads, which must then divide (transformers refuses otherwise)."""
        if self.has(key):
            return self.int(key)
        if key in self.defaults and self.defaults[key] is not None:
            return self.int(key)
        if hidden % heads:
            raise SpecMemoError(
                f"{self.where}: hidden_size {hidden} is not divisible by num_attention_heads {heads}",
                "transformers refuses this config too; state head_dim or fix the sizes",
            )
        return hidden // heads

    def notes(self) -> list[str]:
        """One line naming the transformers defaults used, then the other stated assumptions."""
        lines = list(self.stated)
        if self.defaulted:
            used = ", ".join(f"{k}={v}" for k, v in self.defaulted.items())
            lines.insert(0, f"not in the file, transformers' {self.config_class} defaults used: {used}")
        return lines


def quant_method(cfg: Config) -> str | None:
    """quantization_config.quant_method: a known method is recorded, an unknown one refused."""
    q = cfg.cfg.get("quantization_config")
    if q is None:
        return None
    method = q.get("quant_method") if isinstance(q, dict) else None
    if not isinstance(method, str) or method not in KNOWN_QUANT_METHODS:
        raise SpecMemoError(
            f"{cfg.where}: quantization_config.quant_method {method!r} is not known, so its weight bytes are not either",
            "known: " + ", ".join(KNOWN_QUANT_METHODS),
        )
    return method
