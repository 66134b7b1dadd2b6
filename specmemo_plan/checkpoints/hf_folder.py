"""A Hugging Face checkpoint folder, read from its safetensors headers: no torch, no download.

Accepted folders:
- a local model folder (config.json + *.safetensors);
- a hub-cache snapshot, `models--org--name/snapshots/<revision>/`, whose files are symlinks into
  `../../blobs/` (huggingface_hub's cache layout); a link to a missing blob is an incomplete download;
- the repo's cache root, `models--org--name/`: the snapshot named by `refs/main` is read.

Which files, in transformers' order (modeling_utils: SAFE_WEIGHTS_NAME, then SAFE_WEIGHTS_INDEX_NAME):
`model.safetensors`, else the files of `model.safetensors.index.json`'s weight_map (each must
exist), else a complete `model-0000i-of-0000n.safetensors` set, else a single *.safetensors.
Other *.safetensors (Mistral's consolidated.safetensors beside its shards) are skipped and named in
the notes: counting both would double the weights. Several files and none of these: refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import SpecMemoError
from .safetensors_header import FLOAT_DTYPES, TensorInfo, read_safetensors
from .weights import CheckpointWeights, bytes_per_dtype, files_phrase

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.safetensors$")
BUFFER_DTYPES = ("I64", "BOOL")  # position_ids / masks some older checkpoints store: not parameters


def resolve_snapshot(folder: str | Path) -> Path:
    """The folder holding the files: `folder` itself, or the snapshot `refs/main` names in a repo cache."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpecMemoError(f"{folder} is not a folder", "give a model folder, a hub-cache snapshot or a .gguf")
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return folder
    ref = folder / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text().strip()
        snapshot = snapshots / revision
        if not snapshot.is_dir():
            raise SpecMemoError(f"{folder.name}: refs/main names snapshot {revision}, which is not in snapshots/",
                                "the cache is incomplete: download the model again")
        return snapshot
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) == 1:
        return found[0]
    raise SpecMemoError(
        f"{folder.name}: no refs/main and {len(found)} snapshots",
        "pass the snapshot folder itself: " + (", ".join(p.name for p in found) or "(none downloaded)"),
    )


def _load_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpecMemoError(f"{path} is a link to a missing file", "the download is incomplete") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecMemoError(f"{path}: bad JSON ({str(exc).splitlines()[0]})", f"is it a real {what}?") from None
    if not isinstance(data, dict):
        raise SpecMemoError(f"{path}: not a JSON object", f"is it a real {what}?")
    return data


def _index_files(folder: Path) -> tuple[list[str], dict[str, str]]:
    index = _load_json(folder / INDEX_NAME, INDEX_NAME)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise SpecMemoError(f"{INDEX_NAME} has no weight_map", "is it a transformers index file?")
    files = sorted(set(map(str, weight_map.values())))
    missing = [f for f in files if not (folder / f).exists()]  # exists() follows hub-cache symlinks
    if missing:
        raise SpecMemoError(
            f"{INDEX_NAME} lists {len(files)} shards; missing from {folder}: {', '.join(missing)}",
            "the download is incomplete: download the missing shards",
        )
    return files, {str(k): str(v) for k, v in weight_map.items()}


def _complete_shard_set(names: list[str]) -> list[str] | None:
    """All of model-0000i-of-0000n.safetensors for one stem and n, or None."""
    groups: dict[tuple[str, int], set[int]] = {}
    for name in names:
        m = _SHARD.match(name)
        if m:
            groups.setdefault((m["stem"], int(m["n"])), set()).add(int(m["i"]))
    complete = [(stem, n) for (stem, n), got in groups.items() if got == set(range(1, n + 1))]
    if len(complete) != 1:
        return None
    stem, n = complete[0]
    return [f"{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def choose_files(folder: Path) -> tuple[list[str], dict[str, str] | None, list[str]]:
    """(files to read, weight_map or None, weight files skipped) for one snapshot folder."""
    present = sorted(p.name for p in folder.iterdir() if p.name.endswith(".safetensors"))
    weight_map = None
    if SINGLE_NAME in present:  # transformers looks for it before the index
        files = [SINGLE_NAME]
    elif (folder / INDEX_NAME).exists():
        files, weight_map = _index_files(folder)
    elif (shards := _complete_shard_set(present)) is not None:
        files = shards
    elif len(present) == 1:
        files = present
    elif not present:
        raise SpecMemoError(f"no .safetensors files in {folder}", "give a folder with the model's *.safetensors")
    else:
        raise SpecMemoError(f"{folder}: {len(present)} .safetensors files and no {INDEX_NAME}: {', '.join(present)}",
                            f"which are the model? add its {INDEX_NAME}, or pass one file")
    skipped = [p for p in present if p not in files]
    if weight_map is None and (folder / INDEX_NAME).exists():
        skipped.append(INDEX_NAME)
    return files, weight_map, skipped


def quant_method(config: dict) -> str | None:
    """config.json's quantization_config.quant_method (compression_config for older
    compressed-tensors checkpoints), passed through as written; None when unquantised."""
    for key in ("quantization_config", "compression_config"):
        qc = config.get(key)
        if isinstance(qc, dict):
            return str(qc.get("quant_method") or "unknown")
    return None


def logical_params(tensors: list[TensorInfo], method: str | None) -> tuple[int | None, list[str]]:
    """Parameter count when the stored elements are the parameters (unquantised float tensors)."""
    if method is not None:
        return None, [f"quantised ({method}): stored bytes are exact, the parameter count is not derivable"]
    packed = sorted({t.dtype for t in tensors} - set(FLOAT_DTYPES) - set(BUFFER_DTYPES))
    if packed:
        return None, [f"{', '.join(packed)} tensors and no quantization_config: parameter count not derivable"]
    buffers = [t for t in tensors if t.dtype in BUFFER_DTYPES]
    notes = [f"{len(buffers)} {'/'.join(sorted({t.dtype for t in buffers}))} buffers not counted as parameters"] \
        if buffers else []
    return sum(t.num_elements for t in tensors if t.dtype in FLOAT_DTYPES), notes


def read_safetensors_files(paths: list[Path], weight_map: dict[str, str] | None = None) -> list[TensorInfo]:
    """Headers of several files; refuses a tensor in two files or one the index misplaces."""
    tensors: list[TensorInfo] = []
    where: dict[str, str] = {}
    for path in paths:
        for t in read_safetensors(path):
            if t.name in where:
                raise SpecMemoError(f"tensor {t.name!r} is in both {where[t.name]} and {path.name}",
                                    "the checkpoint is inconsistent")
            where[t.name] = path.name
            tensors.append(t)
    for name, file in (weight_map or {}).items():
        if where.get(name) != file:
            found = f"it is in {where[name]}" if name in where else "no header has it"
            raise SpecMemoError(f"{INDEX_NAME} maps {name!r} to {file}, but {found}",
                                "the checkpoint is inconsistent: download it again")
    return tensors


def read_checkpoint_folder(folder: str | Path) -> CheckpointWeights:
    """Exact stored weights of a local HF folder, hub-cache snapshot or hub-cache repo root."""
    snapshot = resolve_snapshot(folder)
    files, weight_map, skipped = choose_files(snapshot)
    tensors = read_safetensors_files([snapshot / f for f in files], weight_map)
    config_path = snapshot / "config.json"
    method = quant_method(_load_json(config_path, "config.json")) if config_path.exists() else None
    params, notes = logical_params(tensors, method)
    if not config_path.exists():
        notes.append("no config.json: quantisation method unknown")
    if skipped:
        notes.append(f"skipped (not the model's files): {', '.join(skipped)}")
    if weight_map is not None and len(weight_map) != len(tensors):
        notes.append(f"{len(tensors) - len(weight_map)} tensors in the headers are not in {INDEX_NAME}")
    return CheckpointWeights(
        format="safetensors",
        files=tuple(str(snapshot / f) for f in files),
        tensors=tuple(tensors),
        total_bytes=sum(t.nbytes for t in tensors),
        num_elements=sum(t.num_elements for t in tensors),
        dtypes=bytes_per_dtype(tensors),
        source=files_phrase("safetensors", len(files)),
        quant_method=method,
        logical_params=params,
        notes=tuple(notes),
    )
