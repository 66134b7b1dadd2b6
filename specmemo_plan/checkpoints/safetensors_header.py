"""One safetensors file's header, read in pure Python: every tensor's dtype, shape and stored bytes.

Format (huggingface/safetensors, safetensors/src/tensor.rs, the 0.6 line): 8 bytes little-endian
u64 N, then N bytes of UTF-8 JSON, then the data. The JSON maps each tensor name to
{"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data start); the optional
"__metadata__" key holds free-form strings. The reader there (`Metadata::validate`,
`SafeTensors::read_metadata`) refuses a header over 100,000,000 bytes, offsets that are not
contiguous from 0 in order, `end - begin != prod(shape) * bitsize / 8` (a sub-byte tensor must end
on a byte boundary), and a data section that does not end exactly at the end of the file. We refuse
the same files, each with a one-line reason, and read only the header (never the data).

Only the header is read, so packed formats come out exact: a GPTQ `qweight` is I32, an MXFP4
`*_blocks` tensor is U8; each is counted at its stored bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecMemoError

MAX_HEADER_BYTES = 100_000_000  # safetensors' MAX_HEADER_SIZE
LENGTH_BYTES = 8  # the u64 header length

# Bits per element of each dtype string: safetensors `Dtype::bitsize` (tensor.rs). F4 is MXFP4's
# E2M1, F6_* MXFP6, F8_E8M0 the MX shared exponent; C64 a complex of two f32.
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # dtypes whose element count is a parameter count


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor: `dtype` is the file's own type name (safetensors dtype or ggml type)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)


def tensor_nbytes(dtype: str, shape: tuple[int, ...], what: str = "tensor") -> int:
    """Stored bytes: prod(shape) * bits(dtype) / 8, refused when it is not whole (tensor.rs)."""
    if dtype not in SAFETENSORS_DTYPE_BITS:
        raise SpecMemoError(f"{what}: unknown safetensors dtype {dtype!r}",
                            "known: " + ", ".join(SAFETENSORS_DTYPE_BITS))
    elements = 1
    for d in shape:
        elements *= d
    bits = elements * SAFETENSORS_DTYPE_BITS[dtype]
    if bits % 8:
        raise SpecMemoError(f"{what}: {elements} {dtype} values do not end on a byte boundary",
                            "safetensors refuses such a tensor (MisalignedSlice)")
    return bits // 8


def _bad(path: Path, why: str, hint: str | None = None) -> SpecMemoError:
    return SpecMemoError(f"{path}: {why}", hint or "is it a complete .safetensors file?")


def file_size(path: Path) -> int:
    """Size of the file a path (or a hub-cache symlink) points to; a clear error for a broken link."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        if os.path.islink(path):
            raise SpecMemoError(f"{path} is a link to a missing file ({os.readlink(path)})",
                                "the download is incomplete: download the model again") from None
        raise SpecMemoError(f"{path} does not exist") from None


def _read_json_header(path: Path) -> tuple[dict, int, int]:
    size = file_size(path)
    with open(path, "rb") as f:
        prefix = f.read(LENGTH_BYTES)
        if len(prefix) < LENGTH_BYTES:
            raise _bad(path, f"file is {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            raise _bad(path, f"header length {n} is over safetensors' limit of {MAX_HEADER_BYTES} bytes",
                       "not a safetensors file?")
        if LENGTH_BYTES + n > size:
            raise _bad(path, f"truncated: the header needs {LENGTH_BYTES + n} bytes, the file has {size}",
                       "the download is incomplete: download it again")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"bad JSON header ({str(exc).splitlines()[0]})") from None
    if not isinstance(header, dict):
        raise _bad(path, f"bad JSON header (a {type(header).__name__}, not an object)")
    return header, n, size


def _entry(path: Path, name: str, value) -> tuple[TensorInfo, int, int]:
    what = f"{path}: tensor {name!r}"
    if not isinstance(value, dict) or not {"dtype", "shape", "data_offsets"} <= set(value):
        raise SpecMemoError(f"{what} lacks dtype, shape or data_offsets", "is it a safetensors file?")
    shape, offsets = value["shape"], value["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise SpecMemoError(f"{what} has a bad shape {shape!r}", "dimensions are non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            or offsets[1] < offsets[0]):
        raise SpecMemoError(f"{what} has bad data_offsets {offsets!r}", "expected [begin, end], begin <= end")
    nbytes = tensor_nbytes(str(value["dtype"]), tuple(shape), what)
    if offsets[1] - offsets[0] != nbytes:
        raise SpecMemoError(
            f"{what}: data_offsets span {offsets[1] - offsets[0]} bytes, "
            f"but {value['dtype']} x {tuple(shape)} is {nbytes} bytes",
            "the header is inconsistent: the file is corrupt",
        )
    return TensorInfo(name, str(value["dtype"]), tuple(shape), nbytes), offsets[0], offsets[1]


def read_safetensors(path: str | Path) -> list[TensorInfo]:
    """Every tensor of one .safetensors file, in data order, from its header alone.

    Checks what the safetensors loader checks (see the module docstring); a truncated file, a bad
    header or bytes after the last tensor each give a one-line SpecMemoError."""
    path = Path(path)
    header, n, size = _read_json_header(path)
    entries = [_entry(path, name, value) for name, value in header.items() if name != "__metadata__"]
    entries.sort(key=lambda e: (e[1], e[2]))
    end = 0
    for info, begin, stop in entries:
        if begin != end:
            raise _bad(path, f"tensor {info.name!r} starts at data offset {begin}, expected {end}",
                       "safetensors requires contiguous tensors: the file is corrupt")
        end = stop
    data_end = LENGTH_BYTES + n + end
    if data_end > size:
        raise _bad(path, f"truncated: the header says the data ends at byte {data_end}, the file has {size}",
                   "the download is incomplete: download it again")
    if data_end < size:
        raise _bad(path, f"{size - data_end} bytes after the last tensor (data ends at {data_end} of {size})",
                   "safetensors refuses such a file (MetadataIncompleteBuffer)")
    return [info for info, _, _ in entries]
