"""Exact weight bytes from a checkpoint's own headers: safetensors and GGUF, pure Python, no download.

- `read_checkpoint(path)`: a .gguf file, a .safetensors file, a local Hugging Face folder, a
  hub-cache snapshot (`models--org--name/snapshots/<rev>/`) or a hub-cache repo root
  (`models--org--name/`, the snapshot `refs/main` names) -> `CheckpointWeights`.
- `read_safetensors(path)` / `read_gguf(path)`: one file's header, checked as the loaders check it.
- `ggml_type(name_or_id)`, `ggml_nbytes(type, shape)`: ggml's block table (ggml_types.py).

Only headers are read, so this stays fast (the data is never touched) and exact for every stored
format: each tensor counts at the bytes it is stored in.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecMemoError
from .ggml_types import GGML_TYPES, GGMLType, ggml_nbytes, ggml_type
from .gguf_header import GGUFHeader, GGUFTensor, read_gguf, read_gguf_model
from .hf_folder import logical_params, read_checkpoint_folder, resolve_snapshot
from .safetensors_header import SAFETENSORS_DTYPE_BITS, TensorInfo, read_safetensors
from .gguf_config import GGUF_ARCHITECTURES, config_from_gguf
from .weights import CheckpointWeights, StoredWeights, bytes_per_dtype, files_phrase

__all__ = [
    "CheckpointWeights", "GGUF_ARCHITECTURES", "GGMLType", "GGML_TYPES", "GGUFHeader", "GGUFTensor", "SAFETENSORS_DTYPE_BITS",
    "TensorInfo", "ggml_nbytes", "ggml_type", "read_checkpoint", "read_checkpoint_folder", "read_gguf",
    "read_gguf_model", "read_safetensors", "read_safetensors_file", "resolve_snapshot", "StoredWeights", "config_from_gguf",
]


def read_safetensors_file(path: str | Path) -> CheckpointWeights:
    """One .safetensors file on its own (no config.json: the quantisation method is unknown)."""
    tensors = read_safetensors(path)
    params, notes = logical_params(tensors, None)
    return CheckpointWeights(
        format="safetensors", files=(str(path),), tensors=tuple(tensors),
        total_bytes=sum(t.nbytes for t in tensors), num_elements=sum(t.num_elements for t in tensors),
        dtypes=bytes_per_dtype(tensors), source=files_phrase("safetensors", 1),
        logical_params=params, notes=tuple(notes) + ("a single file: no config.json read",),
    )


def read_checkpoint(path: str | Path) -> CheckpointWeights:
    """Stored weights of any checkpoint path this package reads (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return read_checkpoint_folder(path)
    if path.suffix == ".gguf":
        return read_gguf_model(path)
    if path.suffix == ".safetensors":
        return read_safetensors_file(path)
    if not path.exists() and not path.is_symlink():
        raise SpecMemoError(f"{path} does not exist", "give a .gguf, a .safetensors or a model folder")
    raise SpecMemoError(f"{path.name}: not a checkpoint this reads", "give a .gguf, a .safetensors or a model folder")
