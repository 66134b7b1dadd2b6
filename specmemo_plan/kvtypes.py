"""KV cache element types as the engines store them, with separate K and V types.

A `KVType` stores `block_values` values in `block_bytes` bytes, scales included. Plain types are
blocks of one value. One token's K row of one layer holds n_embd_k_gqa = n_kv_heads * head_dim
values (V likewise with n_embd_v_gqa); `kv_row_bytes` gives its bytes.

Sources, per family:
- fp32 / fp16 / bf16: one IEEE/bfloat value each (4, 2, 2 bytes); every engine; llama.cpp spells
  them f32 / f16 / bf16, vLLM float16 / bfloat16 (vllm/config/cache.py `CacheDType`).
- fp8, fp8_e4m3, fp8_e5m2: one byte a value. vLLM `--kv-cache-dtype` accepts fp8 (= fp8_e4m3 on
  CUDA and ROCm), fp8_e4m3 and fp8_e5m2 (vllm/config/cache.py `CacheDType` and its `cache_dtype`
  docstring); SGLang `--kv-cache-dtype` accepts fp8_e4m3 and fp8_e5m2
  (python/sglang/srt/server_args.py `kv_cache_dtype` choices). Their scales are per layer
  (vLLM's k_scale / v_scale, one float each), weights rather than cache: not counted here.
- int8: one byte a value with per-tensor scales, TensorRT-LLM's INT8 KV cache (`--int8_kv_cache`,
  examples/llama README). Per-token-head int8 (vLLM `int8_per_token_head`) stores scales per token
  and is not this type.
- q8_0 q4_0 q4_1 iq4_nl q5_0 q5_1: llama.cpp's `--cache-type-k` / `--cache-type-v` (-ctk / -ctv)
  values (common/arg.cpp `kv_cache_types`: f32 f16 bf16 q8_0 q4_0 q4_1 iq4_nl q5_0 q5_1), at ggml's
  block sizes (checkpoints/ggml_types.py, from ggml-common.h): q8_0 is 34 bytes per 32 values =
  8.5 bits. llama.cpp quantises each K / V row in blocks of 32 and refuses a head size that is not
  a whole number of blocks (src/llama-context.cpp `llama_init_from_model`: "K cache type %s with
  block size %u does not divide n_embd_head_k=%u"); it also refuses a quantised V cache without
  flash attention ("V cache quantization requires flash_attn").
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .checkpoints.ggml_types import GGML_TYPES
from .errors import SpecMemoError


@dataclass(frozen=True)
class KVType:
    """One KV cache element type: `block_values` values take `block_bytes` bytes."""

    name: str
    block_values: int
    block_bytes: int

    @property
    def bits_per_value(self) -> float:
        """8 * block_bytes / block_values (q8_0: 8.5)."""
        return 8 * self.block_bytes / self.block_values

    @property
    def is_block_quantized(self) -> bool:
        """A llama.cpp block type (scales inside the block, rows in whole blocks)."""
        return self.block_values > 1


def _ggml(name: str) -> KVType:
    t = GGML_TYPES[name.upper()]
    return KVType(name, t.block_values, t.block_bytes)


KV_TYPES: dict[str, KVType] = {
    "fp32": KVType("fp32", 1, 4),
    "fp16": KVType("fp16", 1, 2),
    "bf16": KVType("bf16", 1, 2),
    "fp8": KVType("fp8", 1, 1),  # vLLM's name for fp8_e4m3
    "fp8_e4m3": KVType("fp8_e4m3", 1, 1),
    "fp8_e5m2": KVType("fp8_e5m2", 1, 1),
    "int8": KVType("int8", 1, 1),
    **{n: _ggml(n) for n in ("q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")},
}
# Other spellings of the same storage: llama.cpp's f32/f16 and vLLM/SGLang's long names.
ALIASES = {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16", "half": "fp16",
           "bfloat16": "bf16"}
LLAMACPP_TYPES = ("fp32", "fp16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
# How each engine spells a type on its command line; a type an engine lacks is absent (sources above).
ENGINE_SPELLINGS: dict[str, dict[str, str]] = {
    "llama.cpp": {"fp32": "f32", "fp16": "f16", "bf16": "bf16",
                  **{n: n for n in ("q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")}},
    "vllm": {"fp16": "float16", "bf16": "bfloat16", "fp8": "fp8", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"},
    "sglang": {"bf16": "bf16", "fp8": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"},
}


def kv_type(name: str) -> KVType:
    """The KVType for a name or alias (case-insensitive); one line listing the known names otherwise."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in KV_TYPES:
        return KV_TYPES[key]
    if key == "auto":
        raise SpecMemoError("KV type 'auto' is the engine's default, not a type",
                            "leave --kv-dtype out for the compute dtype, or name one: " + ", ".join(KV_TYPES))
    close = difflib.get_close_matches(key, [*KV_TYPES, *ALIASES], n=3, cutoff=0.5)
    raise SpecMemoError(f"unknown KV cache type {name!r}",
                        "known: " + ", ".join(KV_TYPES) + (f"; close: {', '.join(close)}" if close else ""))


def parse_kv_dtypes(text: str) -> tuple[KVType, KVType]:
    """'q8_0:f16' -> (K type, V type); 'q8_0' -> the same type for both."""
    parts = str(text).split(":")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise SpecMemoError(f"cannot read KV types {text!r}", "write K or K:V, e.g. q8_0 or q8_0:f16")
    k = kv_type(parts[0])
    return k, (kv_type(parts[1]) if len(parts) == 2 else k)


def kv_row_bytes(kv: KVType, elements: int, head_dim: int | None = None, which: str = "K") -> int:
    """Bytes of one token's `which` row of one layer: elements / block_values * block_bytes.

    `elements` is n_embd_k_gqa (or n_embd_v_gqa) = n_kv_heads * head_dim. A block type needs whole
    blocks, per head when `head_dim` is given (llama.cpp's own check) and per row in any case."""
    if elements <= 0:
        raise SpecMemoError(f"a {which} row needs a positive number of values, got {elements}")
    if head_dim is not None and head_dim % kv.block_values:
        raise SpecMemoError(
            f"{which} cache type {kv.name} stores blocks of {kv.block_values} values, "
            f"which do not divide the head size {head_dim}",
            f"llama.cpp refuses this ('{which} cache type {kv.name} with block size {kv.block_values} does not "
            f"divide n_embd_head_{which.lower()}={head_dim}'): use f16 or bf16 for this model",
        )
    if elements % kv.block_values:
        raise SpecMemoError(
            f"{which} cache type {kv.name}: a row of {elements} values is not a whole number of "
            f"{kv.block_values}-value blocks",
            "llama.cpp quantises each row in whole blocks and refuses this model with this type",
        )
    return elements // kv.block_values * kv.block_bytes


def canonical_kv(text: str) -> str:
    """The one spelling of a K[:V] pair the plan stores: 'f16' -> 'fp16', 'q8_0:q8_0' -> 'q8_0',
    'q8_0:f16' -> 'q8_0:fp16'."""
    k, v = parse_kv_dtypes(text)
    return k.name if k == v else f"{k.name}:{v.name}"


def kv_pair_notes(k: KVType, v: KVType) -> tuple[str, ...]:
    """What an engine requires of this K/V pair (sources in the module docstring)."""
    notes = []
    if k != v:
        notes.append("separate K and V types: llama.cpp sets them apart (-ctk / -ctv); "
                     "vLLM and SGLang take one --kv-cache-dtype for both")
    if v.is_block_quantized:
        notes.append(f"llama.cpp: a {v.name} V cache needs flash attention (-fa on)")
    return tuple(notes)


def engines_for(k: KVType, v: KVType) -> tuple[str, ...]:
    """Engines whose command line can express this pair (one dtype for both outside llama.cpp)."""
    out = []
    for engine, names in ENGINE_SPELLINGS.items():
        if k.name in names and v.name in names and (engine == "llama.cpp" or k == v):
            out.append(engine)
    return tuple(out)
