"""A GGUF file's header, read in pure Python: metadata, and every tensor's ggml type, shape and bytes.

Layout (GGUF v2/v3, little-endian; ggml/src/gguf.cpp `gguf_init_from_file_impl` and docs/gguf.md in
ggml-org/ggml): magic "GGUF", u32 version, u64 tensor count, u64 metadata count; each metadata
entry is a string key (u64 length + UTF-8), a u32 value type and the value (types below; an array
is u32 element type + u64 count + elements); each tensor info is a string name, u32 n_dims
(at most GGML_MAX_DIMS = 4), n_dims u64 sizes (ne[0] first: the row), u32 ggml type and a u64
offset into the data section. The data section starts at the next multiple of `general.alignment`
(u32, default GGUF_DEFAULT_ALIGNMENT = 32, a power of two). gguf.cpp requires each tensor's offset
to be the padded sum of the ones before it (GGML_PAD(ggml_nbytes, alignment)); the model loader
requires every tensor to lie inside the file. We refuse the same files, each with one line.
Version 1 (u32 counts, 2023) and big-endian files are refused.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecMemoError
from .ggml_types import ggml_nbytes, ggml_type
from .safetensors_header import TensorInfo, file_size
from .weights import CheckpointWeights, bytes_per_dtype, files_phrase

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # nested arrays are legal GGUF; a deeper nest is a corrupt file
# gguf_type: id -> (name, struct code); STRING (8) and ARRAY (9) are read by hand.
VALUE_TYPES = {
    0: ("uint8", "B"), 1: ("int8", "b"), 2: ("uint16", "H"), 3: ("int16", "h"), 4: ("uint32", "I"),
    5: ("int32", "i"), 6: ("float32", "f"), 7: ("bool", "?"), 8: ("string", None), 9: ("array", None),
    10: ("uint64", "Q"), 11: ("int64", "q"), 12: ("float64", "d"),
}
STRING_TYPE, ARRAY_TYPE = 8, 9
_U64 = struct.Struct("<Q")
_DECODE_ERRORS = "surrogateescape"  # a vocabulary with a stray byte is no reason to refuse the sizes
_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")  # llama_split_path


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor: `shape` in ggml order (shape[0] = ne[0]); `offset` from the data section start."""

    name: str
    ggml_type: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict
    tensors: tuple[GGUFTensor, ...]
    data_offset: int
    alignment: int
    file_size: int

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class _Cursor:
    """Bounds-checked little-endian reads over the mapped file."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise SpecMemoError(f"{self.path}: truncated GGUF header (file ends inside {what}, "
                                f"at byte {len(self.buf)})", "the download is incomplete: download it again")
        self.pos += n
        return start

    def scalar(self, code: str, what: str):
        return struct.unpack_from("<" + code, self.buf, self.take(struct.calcsize(code), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("Q", what)
        start = self.take(n, what)
        return self.buf[start:start + n].decode("utf-8", _DECODE_ERRORS)

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype not in VALUE_TYPES:
            raise SpecMemoError(f"{self.path}: {what} has unknown GGUF value type {vtype}", "the file is corrupt")
        if vtype == STRING_TYPE:
            return self.string(what)
        if vtype != ARRAY_TYPE:
            return self.scalar(VALUE_TYPES[vtype][1], what)
        if depth >= MAX_ARRAY_DEPTH:
            raise SpecMemoError(f"{self.path}: {what} nests arrays deeper than {MAX_ARRAY_DEPTH}",
                                "the file is corrupt")
        etype, count = self.scalar("I", what), self.scalar("Q", what)
        if etype in VALUE_TYPES and VALUE_TYPES[etype][1]:  # numbers: one unpack for the whole array
            code = VALUE_TYPES[etype][1]
            start = self.take(count * struct.calcsize(code), what)
            return list(struct.unpack_from(f"<{count}{code}", self.buf, start))
        if count * 8 > len(self.buf) - self.pos:  # a string or array item takes >= 8 bytes
            self.take(count * 8, what)  # raises: truncated, before a loop over a garbage count
        if etype == STRING_TYPE:
            return self.strings(count, what)
        return [self.value(etype, what, depth + 1) for _ in range(count)]

    def strings(self, count: int, what: str) -> list[str]:
        """An array of strings in one tight loop: a tokenizer's vocabulary is 50k-250k of them."""
        buf, pos, end, unpack, out = self.buf, self.pos, len(self.buf), _U64.unpack_from, []
        for _ in range(count):
            if pos + 8 > end:
                break
            (n,) = unpack(buf, pos)
            if pos + 8 + n > end:
                break
            out.append(buf[pos + 8:pos + 8 + n])
            pos += 8 + n
        self.pos = pos
        if len(out) < count:
            self.take(end + 1, what)  # raises: truncated
        return [b.decode("utf-8", _DECODE_ERRORS) for b in out]


def _open(path: Path):
    size = file_size(path)
    if size < 4:
        raise SpecMemoError(f"{path}: not a GGUF file ({size} bytes)", "GGUF files start with the bytes 'GGUF'")
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size


def _version(cur: _Cursor) -> int:
    if bytes(cur.buf[0:4]) != GGUF_MAGIC:
        raise SpecMemoError(f"{cur.path}: not a GGUF file (starts with {bytes(cur.buf[0:4])!r})",
                            "GGUF files start with the bytes 'GGUF'")
    cur.pos = 4
    version = cur.scalar("I", "the version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in SUPPORTED_VERSIONS:
            raise SpecMemoError(f"{cur.path}: a big-endian GGUF file", "use the little-endian file")
        raise SpecMemoError(f"{cur.path}: GGUF version {version} is not supported",
                            "versions 2 and 3 are (llama.cpp reads no others)")
    return version


def _metadata(cur: _Cursor, count: int) -> tuple[dict, dict]:
    """(key -> value, key -> GGUF value type id)."""
    metadata: dict = {}
    types: dict = {}
    for i in range(count):
        key = cur.string(f"metadata key {i}")
        if key in metadata:
            raise SpecMemoError(f"{cur.path}: duplicate metadata key {key!r}", "the file is corrupt")
        types[key] = cur.scalar("I", key)
        metadata[key] = cur.value(types[key], key)
    return metadata, types


def _alignment(cur: _Cursor, metadata: dict, raw_types: dict) -> int:
    if "general.alignment" not in metadata:
        return DEFAULT_ALIGNMENT
    value = metadata["general.alignment"]
    if raw_types.get("general.alignment") != 4 or value == 0 or value & (value - 1):
        raise SpecMemoError(f"{cur.path}: general.alignment {value!r} is not a power-of-two uint32",
                            "the file is corrupt")
    return value


def _tensor_infos(cur: _Cursor, count: int) -> list[tuple[str, int, tuple[int, ...], int]]:
    infos, seen = [], set()
    for i in range(count):
        name = cur.string(f"tensor name {i}")
        if name in seen:
            raise SpecMemoError(f"{cur.path}: duplicate tensor {name!r}", "the file is corrupt")
        seen.add(name)
        n_dims = cur.scalar("I", name)
        if n_dims > MAX_DIMS:
            raise SpecMemoError(f"{cur.path}: tensor {name!r} has {n_dims} dimensions, ggml allows {MAX_DIMS}",
                                "the file is corrupt")
        shape = tuple(cur.scalar("Q", name) for _ in range(n_dims))
        infos.append((name, cur.scalar("I", name), shape, cur.scalar("Q", name)))
    return infos


def read_gguf(path: str | Path) -> GGUFHeader:
    """Header of one GGUF file, checked as llama.cpp checks it (see the module docstring)."""
    path = Path(path)
    buf, size = _open(path)
    try:
        cur = _Cursor(buf, path)
        version = _version(cur)
        n_tensors, n_kv = cur.scalar("Q", "the tensor count"), cur.scalar("Q", "the metadata count")
        metadata, raw_types = _metadata(cur, n_kv)
        alignment = _alignment(cur, metadata, raw_types)
        infos = _tensor_infos(cur, n_tensors)
        data_offset = -(-cur.pos // alignment) * alignment
    finally:
        buf.close()
    tensors, expected = [], 0
    for name, type_id, shape, offset in infos:
        gtype = ggml_type(type_id)
        nbytes = ggml_nbytes(gtype, shape, f"{path}: tensor {name!r}")
        if offset != expected:
            raise SpecMemoError(f"{path}: tensor {name!r} has offset {offset}, expected {expected}",
                                "llama.cpp refuses such a file: it is corrupt")
        if data_offset + offset + nbytes > size:
            raise SpecMemoError(
                f"{path}: truncated: tensor {name!r} ends at byte {data_offset + offset + nbytes}, "
                f"the file has {size}", "the download is incomplete: download it again")
        tensors.append(GGUFTensor(name, gtype.name, shape, nbytes, offset))
        expected += -(-nbytes // alignment) * alignment
    return GGUFHeader(version, metadata, tuple(tensors), data_offset, alignment, size)


def split_paths(path: Path, header: GGUFHeader) -> list[Path]:
    """All files of a split GGUF (llama.cpp's `-0000i-of-0000n.gguf`, `split.count` metadata)."""
    count = int(header.metadata.get("split.count", 1) or 1)
    if count <= 1:
        return [path]
    m = _SPLIT.match(path.name)
    if not m or int(m["count"]) != count:
        raise SpecMemoError(f"{path}: split.count is {count}, but the name is not NAME-0000i-of-{count:05d}.gguf",
                            "keep llama.cpp's split file names")
    paths = [path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise SpecMemoError(f"{path} is split in {count} files; missing: {', '.join(missing)}",
                            "download every split")
    return paths


def read_gguf_model(path: str | Path, first: GGUFHeader | None = None) -> CheckpointWeights:
    """Exact stored weights of a GGUF model (every split of a split file). ggml blocks store
    logical values, so the element count is the parameter count of the tensors in the file.
    `first`: the header of `path` when the caller has already read it (it is not read again)."""
    path = Path(path)
    first = first or read_gguf(path)
    paths = split_paths(path, first)
    headers = [first if p == path else read_gguf(p) for p in paths]
    tensors = tuple(TensorInfo(t.name, t.ggml_type, t.shape, t.nbytes) for h in headers for t in h.tensors)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise SpecMemoError(f"{path}: a tensor is in two splits", "the split files do not belong together")
    elements = sum(t.num_elements for t in tensors)
    return CheckpointWeights(
        format="gguf",
        files=tuple(str(p) for p in paths),
        tensors=tensors,
        total_bytes=sum(t.nbytes for t in tensors),
        num_elements=elements,
        dtypes=bytes_per_dtype(tensors),
        source=files_phrase("gguf", len(paths)),
        quant_method=None,
        logical_params=elements,
        notes=(),
    )
