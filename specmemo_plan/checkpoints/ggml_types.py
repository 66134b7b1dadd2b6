"""ggml's tensor types: the id a GGUF file stores, the values per block and the bytes per block.

A quantised ggml tensor is stored in blocks along its first dimension (ne[0]): `block_values` values
take `block_bytes` bytes, scales and minimums included, so a row of n values takes
n / block_values * block_bytes bytes (ggml.c `ggml_row_size`), and ne[0] must be a multiple of the
block (ggml refuses any other row). Bits per value = 8 * block_bytes / block_values.

Sources (our own table, written from these, checked against gguf-py's in tests/test_checkpoints.py):
- ids: ggml/include/ggml.h `enum ggml_type` (ggml-org/llama.cpp, commit 004eaba8); NVFP4 = 40 and
  Q1_0 = 41 from gguf-py 0.19.0 `GGMLQuantizationType` (gguf/constants.py).
- block sizes: the `block_*` structs and their static_asserts in ggml/src/ggml-common.h
  (ggml-org/llama.cpp, commit 01243c58); ggml.c's `type_traits` sets `.blck_size = QK*` and
  `.type_size = sizeof(block_*)` from them. gguf-py's `GGML_QUANT_SIZES` (0.19.0) agrees on every
  type but Q8_1, where it keeps the old float layout (4 + 4 + 32 = 40 bytes); ggml's struct is
  two halves + 32 quants = 36 bytes. Q8_1 is an activation format for dot products, not a file
  format; we follow ggml, the code that reads the files.
Removed ids (4, 5 Q4_2/Q4_3; 31-33 Q4_0_4_4..8_8; 36-38 IQ4_NL_4_4..8_8) are refused: ggml no
longer reads them from GGUF files.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecMemoError, close_names

QK_K = 256  # super-block of the k-quants and i-quants (ggml-common.h)


@dataclass(frozen=True)
class GGMLType:
    """One ggml tensor type."""

    name: str
    type_id: int
    block_values: int
    block_bytes: int

    @property
    def bits_per_value(self) -> float:
        """Stored bits per value, scales included: 8 * block_bytes / block_values."""
        return 8 * self.block_bytes / self.block_values


def _t(name: str, type_id: int, block_values: int, block_bytes: int) -> GGMLType:
    return GGMLType(name, type_id, block_values, block_bytes)


# Each block_bytes is the sum of its struct's fields in ggml-common.h (2 = one ggml_half).
_TYPES = (
    _t("F32", 0, 1, 4),
    _t("F16", 1, 1, 2),
    _t("Q4_0", 2, 32, 2 + 16),  # d, 32 nibbles
    _t("Q4_1", 3, 32, 2 + 2 + 16),  # d, m, 32 nibbles
    _t("Q5_0", 6, 32, 2 + 4 + 16),  # d, qh[4], 32 nibbles
    _t("Q5_1", 7, 32, 2 + 2 + 4 + 16),  # d, m, qh[4], 32 nibbles
    _t("Q8_0", 8, 32, 2 + 32),  # d, 32 int8
    _t("Q8_1", 9, 32, 2 + 2 + 32),  # d, s, 32 int8 (gguf-py says 40: see the module docstring)
    _t("Q2_K", 10, QK_K, QK_K // 16 + QK_K // 4 + 2 + 2),
    _t("Q3_K", 11, QK_K, QK_K // 8 + QK_K // 4 + 12 + 2),
    _t("Q4_K", 12, QK_K, 2 + 2 + 12 + QK_K // 2),
    _t("Q5_K", 13, QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    _t("Q6_K", 14, QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
    _t("Q8_K", 15, QK_K, 4 + QK_K + QK_K // 16 * 2),  # float d, int8 qs, int16 bsums
    _t("IQ2_XXS", 16, QK_K, 2 + QK_K // 8 * 2),
    _t("IQ2_XS", 17, QK_K, 2 + QK_K // 8 * 2 + QK_K // 32),
    _t("IQ3_XXS", 18, QK_K, 2 + 3 * (QK_K // 8)),
    _t("IQ1_S", 19, QK_K, 2 + QK_K // 8 + QK_K // 16),
    _t("IQ4_NL", 20, 32, 2 + 16),
    _t("IQ3_S", 21, QK_K, 2 + 13 * (QK_K // 32) + QK_K // 64),
    _t("IQ2_S", 22, QK_K, 2 + QK_K // 4 + QK_K // 16),
    _t("IQ4_XS", 23, QK_K, 2 + 2 + QK_K // 64 + QK_K // 2),
    _t("I8", 24, 1, 1),
    _t("I16", 25, 1, 2),
    _t("I32", 26, 1, 4),
    _t("I64", 27, 1, 8),
    _t("F64", 28, 1, 8),
    _t("IQ1_M", 29, QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    _t("BF16", 30, 1, 2),
    _t("TQ1_0", 34, QK_K, (QK_K - 4 * QK_K // 64) // 5 + QK_K // 64 + 2),
    _t("TQ2_0", 35, QK_K, QK_K // 4 + 2),
    _t("MXFP4", 39, 32, 1 + 16),  # E8M0 exponent, 32 E2M1 nibbles
    _t("NVFP4", 40, 64, 4 + 32),  # four UE4M3 scales (one per 16), 64 E2M1 nibbles
    _t("Q1_0", 41, 128, 2 + 128 // 8),
)

GGML_TYPES: dict[str, GGMLType] = {t.name: t for t in _TYPES}
GGML_TYPES_BY_ID: dict[int, GGMLType] = {t.type_id: t for t in _TYPES}
REMOVED_TYPE_IDS = {4: "Q4_2", 5: "Q4_3", 31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8",
                    36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8"}


def ggml_type(name_or_id: str | int) -> GGMLType:
    """The type for a name ('Q4_K', case-insensitive) or a GGUF type id; a one-line error otherwise."""
    if isinstance(name_or_id, int):
        if name_or_id in GGML_TYPES_BY_ID:
            return GGML_TYPES_BY_ID[name_or_id]
        if name_or_id in REMOVED_TYPE_IDS:
            raise SpecMemoError(f"ggml type {name_or_id} ({REMOVED_TYPE_IDS[name_or_id]}) was removed from ggml",
                                "re-quantise the file with a current llama.cpp")
        raise SpecMemoError(f"unknown ggml type id {name_or_id}",
                            f"known ids: {min(GGML_TYPES_BY_ID)}..{max(GGML_TYPES_BY_ID)}; a newer llama.cpp type?")
    key = str(name_or_id).upper()
    if key not in GGML_TYPES:
        raise SpecMemoError(f"unknown ggml type {name_or_id!r}", close_names(key, GGML_TYPES))
    return GGML_TYPES[key]


def ggml_nbytes(gtype: GGMLType, shape: tuple[int, ...], what: str = "tensor") -> int:
    """Bytes of a contiguous tensor, ggml order (shape[0] = ne[0], the row):
    prod(shape) / block_values * block_bytes (ggml.c `ggml_nbytes` for a contiguous tensor).

    Refuses a row that is not a whole number of blocks, as ggml does."""
    if any(int(d) < 0 for d in shape):
        raise SpecMemoError(f"{what} has a negative dimension {tuple(shape)}")
    row = int(shape[0]) if shape else 1
    if row % gtype.block_values:
        raise SpecMemoError(
            f"{what}: a row of {row} values is not a whole number of {gtype.name} blocks of {gtype.block_values}",
            "ggml refuses such a tensor; the file is corrupt or not ggml's",
        )
    elements = 1
    for d in shape:
        elements *= int(d)
    return elements // gtype.block_values * gtype.block_bytes
