"""What a checkpoint's own headers say its weights take: the result type shared by both formats."""

from __future__ import annotations

from dataclasses import dataclass, field

from .safetensors_header import TensorInfo


@dataclass(frozen=True)
class CheckpointWeights:
    """Stored weight bytes of a checkpoint, from its headers.

    - `total_bytes`: the sum of every tensor's stored bytes (what loading it takes, before any
      engine-side repacking); packed int4, fp8 + scales, nf4 + absmax, MXFP4 blocks + scales and
      GGUF block quants are all exact because each tensor counts at the bytes it is stored in.
    - `num_elements`: stored elements (a GPTQ `qweight` I32 element holds 8 int4 weights).
    - `dtypes`: stored bytes per dtype (safetensors dtype or ggml type name).
    - `logical_params`: the parameter count, only where the stored elements are the parameters:
      GGUF (ggml blocks store logical values) and unquantised safetensors (float tensors, no
      quantization_config); None for packed or quantised safetensors, where it cannot be derived.
    - `quant_method`: config.json's quantization_config.quant_method, passed through (None if absent).
    - `source`: e.g. "safetensors header (4 files)"; `notes`: what was assumed or skipped.
    """

    format: str  # "safetensors" or "gguf"
    files: tuple[str, ...]
    tensors: tuple[TensorInfo, ...]
    total_bytes: int
    num_elements: int
    dtypes: dict[str, int]
    source: str
    quant_method: str | None = None
    logical_params: int | None = None
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> "StoredWeights":
        return StoredWeights(
            format=self.format, source=self.source, total_bytes=self.total_bytes,
            logical_params=self.logical_params, quant_method=self.quant_method,
            bytes_by_dtype=tuple(self.dtypes.items()), notes=self.notes,
            expert_bytes=sum(t.nbytes for t in self.tensors if is_routed_expert(t.name)),
        )


@dataclass(frozen=True)
class StoredWeights:
    """The part of `CheckpointWeights` a model shape carries (hashable, no tensor list): what the
    weights take as stored, and where that number came from."""

    format: str  # "safetensors" or "gguf"
    source: str  # "GGUF header (1 file)"
    total_bytes: int
    logical_params: int | None
    quant_method: str | None
    bytes_by_dtype: tuple[tuple[str, int], ...]
    notes: tuple[str, ...] = ()
    expert_bytes: int = 0  # tensors of routed experts (read only when routed to): `is_routed_expert`


# Routed-expert tensor names: transformers' `mlp.experts.` (Mixtral, Qwen3-MoE, DeepSeek, GPT-OSS; DeepSeek's
# always-on `shared_experts.` are not routed) and llama.cpp's stacked `ffn_{gate,up,down}_exps` (gguf-py
# tensor_mapping.py); `block_sparse_moe.experts.` is Mixtral's original checkpoint naming.
_EXPERT_MARKS = (".mlp.experts.", ".block_sparse_moe.experts.", "_exps.")


def is_routed_expert(name: str) -> bool:
    return any(mark in name for mark in _EXPERT_MARKS)


def bytes_per_dtype(tensors) -> dict[str, int]:
    """Stored bytes summed per dtype, largest first."""
    out: dict[str, int] = {}
    for t in tensors:
        out[t.dtype] = out.get(t.dtype, 0) + t.nbytes
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def files_phrase(fmt: str, n_files: int) -> str:
    """'safetensors header (4 files)', 'GGUF header (1 file)'."""
    label = {"safetensors": "safetensors", "gguf": "GGUF"}[fmt]
    return f"{label} header ({n_files} file{'s' if n_files != 1 else ''})"
