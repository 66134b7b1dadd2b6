"""A Hugging Face style config.json from a GGUF header's metadata, for the architectures we can shape.

Keys follow llama.cpp's gguf-py `constants.py` (`{arch}.block_count`, `{arch}.attention.head_count_kv`,
...); the mapping back to transformers' config fields is the one transformers' GGUF loader uses
(`integrations/ggml.py`, `GGUF_CONFIG_MAPPING`, 5.24). Only the fields that decide memory are read.
An architecture outside `GGUF_ARCHITECTURES` is refused in one line rather than guessed.
"""

from __future__ import annotations

from ..errors import SpecMemoError
from .gguf_header import GGUFHeader

# GGUF general.architecture -> transformers model_type. Mistral's GGUF files say "llama".
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

# config.json field <- GGUF key under the architecture's prefix
_FIELDS = {
    "hidden_size": "embedding_length",
    "intermediate_size": "feed_forward_length",
    "num_hidden_layers": "block_count",
    "num_attention_heads": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv",
    "head_dim": "attention.key_length",
    "max_position_embeddings": "context_length",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon",
    "rope_theta": "rope.freq_base",
    "sliding_window": "attention.sliding_window",
}


def config_from_gguf(header: GGUFHeader, name: str) -> dict:
    """config.json fields of a GGUF model. The vocabulary is `{arch}.vocab_size`, else the length of
    `tokenizer.ggml.tokens`; the output layer is tied when the file has no `output.weight` tensor
    (llama.cpp then reuses `token_embd.weight`, as transformers' tie_word_embeddings does)."""
    meta = header.metadata
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise SpecMemoError(f"GGUF {name}: architecture {arch!r} is not supported",
                            "supported GGUF architectures: " + ", ".join(GGUF_ARCHITECTURES))
    cfg: dict = {"model_type": GGUF_ARCHITECTURES[arch]}
    for field_name, key in _FIELDS.items():
        value = meta.get(f"{arch}.{key}")
        if value is not None:
            cfg[field_name] = value
    tokens = meta.get("tokenizer.ggml.tokens")
    cfg["vocab_size"] = meta.get(f"{arch}.vocab_size") or (len(tokens) if tokens is not None else None)
    cfg["tie_word_embeddings"] = "output.weight" not in {t.name for t in header.tensors}
    for field_name, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is not None:
            cfg[field_name] = value
    if arch == "qwen2":
        cfg["use_sliding_window"] = False  # Qwen2 GGUFs carry no window; transformers' default is off
    return {k: v for k, v in cfg.items() if v is not None}
