"""The memory model of speculative decoding: one small pure function per component.

Notation (docs/memory-model.md): B batch, C planned context per sequence (prompt + new tokens), k draft
length, V vocabulary; per model L layers, b_w bytes per weight, b_kv bytes per KV element; per layer
what it caches per token (models.CacheLayer: kv_heads x (k_dim + v_dim)) and its window, if any.
Activations (the transient peak of a forward) are in activations.py.

The static components (weights, KV, candidate buffers) are also the engine's allocation policy:
`engine/` allocates exactly `kv_slots` positions and exactly the `candidate_buffer_specs` tensors,
so prediction and allocation agree to the byte (tests check it on CPU). The transient parts
(activations, runtime overhead) are estimates, checked against measurement on a device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .errors import SpecMemoError
from .kvtypes import KV_TYPES, kv_row_bytes, parse_kv_dtypes
from .models import CacheLayer, ModelShape

# Bits per stored element. Weight-only quantised formats (fp8, int8, int4) compute in fp16.
DTYPE_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}
FLOAT_DTYPES = ("fp32", "fp16", "bf16")
# "stored": the weights exactly as the checkpoint's own headers say they are stored (ModelShape.stored)
STORED = "stored"
WEIGHT_DTYPES = tuple(DTYPE_BITS) + (STORED,)
KV_DTYPES = tuple(KV_TYPES)  # each may be given as K or K:V (kvtypes.parse_kv_dtypes)
INDEX_BYTES = 8  # token ids and positions are int64, as torch embeddings and transformers expect
BOOL_BYTES = 1  # torch.bool
# int4 group size: GPTQ and AWQ default to groups of 128 input features with an fp16 scale and
# an fp16 zero point each (GPTQ paper, Frantar et al. 2022; AutoAWQ `q_group_size=128`).
INT4_GROUP_SIZE = 128
DEFAULT_PREFILL_CHUNK = 512  # tokens per prefill forward; bounds the prefill activations

COMPONENTS = (
    "target_weights",
    "draft_weights",
    "target_kv",
    "draft_kv",
    "candidate_buffers",
    "activations",
    "runtime_overhead",
)


def compute_dtype(weight_dtype: str) -> str:
    """dtype of activations and logits: the weight dtype, or fp16 for quantised (and `stored`) weights:
    GPTQ/AWQ/GGUF kernels dequantise to fp16; a bf16 checkpoint computes in bf16, the same 2 bytes."""
    return weight_dtype if weight_dtype in FLOAT_DTYPES else "fp16"


def dtype_bytes(dtype: str) -> int:
    """Bytes of one element of a whole-byte dtype (int4 is only a weight format)."""
    if dtype == "int64":
        return INDEX_BYTES
    if dtype == "bool":
        return BOOL_BYTES
    bits = DTYPE_BITS[dtype]
    if bits % 8:
        raise SpecMemoError(f"{dtype} has no whole-byte element", "use it for weights only")
    return bits // 8


@dataclass(frozen=True)
class Knobs:
    """What the user (or the autotuner) chooses; everything memory depends on."""

    batch_size: int  # sequences decoded together
    max_context: int  # tokens per sequence: prompt + generated
    draft_length: int = 0  # k draft tokens per step; 0 = plain decoding (no draft)
    weight_dtype: str = "fp16"  # target weights
    draft_weight_dtype: str | None = None  # None: same as the target
    kv_dtype: str | None = None  # None: the compute dtype
    prefill_chunk: int | None = None  # prompt tokens per prefill forward; None: min(C, 512)
    # drafting/methods.py; None: draft-model with a draft, none without (plans made before the knob)
    draft_method: str | None = None
    tree_depth: int | None = None  # draft steps of a token tree; None: a chain (depth = draft_length)
    tree_topk: int | None = None  # children per node; None: 1 (a chain)
    head_embedding: str | None = None  # a head's embedding (and MTP's head): shared | copied; None: shared

    @property
    def draft_dtype(self) -> str:
        return self.draft_weight_dtype or self.weight_dtype

    @property
    def cache_dtype(self) -> str:
        return self.kv_dtype or compute_dtype(self.weight_dtype)

    @property
    def tree(self):
        """The token tree verified per step (drafting.trees.TreeShape); a chain of k: depth k, top-k 1."""
        from .drafting.trees import TreeShape

        return TreeShape(self.tree_depth or self.draft_length, self.tree_topk or 1, self.draft_length)

    def with_tree(self, tree) -> "Knobs":
        """These knobs drafting `tree` (a TreeShape): T draft tokens; a chain keeps no tree fields."""
        chain = tree.is_chain
        return replace(self, draft_length=tree.tokens, tree_depth=None if chain else tree.depth,
                       tree_topk=None if chain else tree.topk)

    @property
    def embedding_policy(self) -> str:
        return self.head_embedding or "shared"

    def method(self, has_draft: bool) -> str:
        from .drafting.methods import effective_method

        return effective_method(self.draft_method, has_draft)

    @property
    def chunk(self) -> int:
        return min(self.prefill_chunk or DEFAULT_PREFILL_CHUNK, self.max_context)

    def validate(self, has_draft: bool) -> "Knobs":
        for name in ("batch_size", "max_context"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise SpecMemoError(f"{name} must be a positive integer, got {value!r}")
        if self.draft_length < 0:
            raise SpecMemoError(f"draft_length must be >= 0, got {self.draft_length}")
        self._validate_method(has_draft)
        if self.prefill_chunk is not None and self.prefill_chunk <= 0:
            raise SpecMemoError(f"prefill_chunk must be positive, got {self.prefill_chunk}")
        for name, value, allowed in (
            ("weight_dtype", self.weight_dtype, WEIGHT_DTYPES),
            ("draft_weight_dtype", self.draft_dtype, WEIGHT_DTYPES),
        ):
            if value not in allowed:
                raise SpecMemoError(f"{name} {value!r} is not known", "choose one of: " + ", ".join(allowed))
        try:
            parse_kv_dtypes(self.cache_dtype)  # K[:V]
        except SpecMemoError as exc:
            raise SpecMemoError(f"kv_dtype {self.cache_dtype!r}: {exc.message}", exc.hint) from None
        return self

    def _validate_method(self, has_draft: bool) -> None:
        """The method's draft and k rules, and a tree only where the method drafts trees."""
        from .drafting.methods import validate_knobs

        validate_knobs(self, has_draft)


@dataclass(frozen=True)
class BufferSpec:
    """One preallocated tensor of the engine: the single definition both sides use."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # fp32/fp16/bf16, int64 or bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtype_bytes(self.dtype)


@dataclass(frozen=True)
class MemoryBreakdown:
    components: dict[str, int] = field(default_factory=dict)  # COMPONENTS -> bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.components.values())

    @property
    def weights_bytes(self) -> int:
        return self.components["target_weights"] + self.components["draft_weights"]

    @property
    def generation_bytes(self) -> int:
        """Peak memory during generation minus the static weights (docs/memory-model.md)."""
        return self.total_bytes - self.weights_bytes

    def as_dict(self) -> dict:
        return {
            "total_bytes": self.total_bytes,
            "generation_bytes": self.generation_bytes,
            "components": dict(self.components),
        }


# ----------------------------------------------------------------------------- components


def weight_bytes(model: ModelShape | None, dtype: str) -> int:
    """Parameter bytes. num_params * b_w for float dtypes.

    Quantised formats replace only the decoder layers' weight matrices (`ModelShape.matrices`, routed
    experts included); embeddings, output layer, norms, biases and routers stay in fp16, as
    GPTQ/AWQ/bitsandbytes/FP8 checkpoints do. Scale overhead, per weight matrix of shape (out, in):
    - fp8: one fp32 scale per tensor (per-tensor FP8 as in vLLM's `fp8` and FBGEMM checkpoints).
    - int8: one fp32 scale per output row (bitsandbytes LLM.int8 `SCB`, Dettmers et al. 2022).
    - int4: an fp16 scale and an fp16 zero per group of 128 inputs (GPTQ/AWQ default grouping).
    """
    if model is None:
        return 0
    if dtype == STORED:
        return stored_weights(model).total_bytes
    if dtype in FLOAT_DTYPES:
        return model.num_params * dtype_bytes(dtype) + fp32_kept_bytes(model, dtype)
    return fp32_kept_bytes(model, "fp16") + quantised_bytes(model.matrices, dtype) + (model.num_params - matrix_params(model.matrices)) * dtype_bytes("fp16")


def fp32_kept_bytes(model: ModelShape, dtype: str) -> int:
    """What the parameters transformers keeps in float32 add over `dtype` (modeling_utils 5.24: the
    `_keep_in_fp32_modules_strict` ones in fp16 and bf16, e.g. DeepSeek's router `gate.weight`; the
    `_keep_in_fp32_modules` ones in fp16 only, e.g. GPT-OSS's norms). Quantised formats keep their
    16-bit parts in fp16, so they count as fp16 here."""
    if dtype not in ("fp16", "bf16"):
        return 0
    kept = model.fp32_params_16bit + (model.fp32_params_fp16 if dtype == "fp16" else 0)
    return kept * (4 - dtype_bytes(dtype))


def stored_weights(model: ModelShape):
    """The checkpoint headers' account of `model` (`--dtype stored`): every tensor at its stored bytes."""
    if model.stored is None:
        raise SpecMemoError(f"{model.name} has no weight files whose headers could be read",
                            "--dtype stored needs a model folder with *.safetensors or a .gguf file")
    return model.stored


def matrix_params(matrices) -> int:
    """Weights of the quantisable matrices."""
    return sum(m.params for m in matrices)


def quantised_bytes(matrices, dtype: str) -> int:
    """Bytes of `matrices` (models.Matrix) stored in a weight-only quantised dtype, scales included
    (see weight_bytes for the formats)."""
    overhead = 0
    for m in matrices:
        if dtype == "fp8":
            per_matrix = 4
        elif dtype == "int8":
            per_matrix = 4 * m.out_features
        elif dtype == "int4":
            per_matrix = 2 * 2 * m.out_features * math.ceil(m.in_features / INT4_GROUP_SIZE)
        else:
            raise SpecMemoError(f"{dtype!r} is not a weight-only quantised format", "use fp8, int8 or int4")
        overhead += per_matrix * m.count
    return matrix_params(matrices) * DTYPE_BITS[dtype] // 8 + overhead


def kv_layer_slots(layer: CacheLayer, max_context: int, in_flight: int) -> int:
    """KV positions one layer reserves per sequence: C + k for a full-attention layer, and for a
    sliding-window layer min(C + k, window + k).

    A verify pass writes the last accepted token and k drafts at positions L-1 .. L-1+k while the
    sequence holds L <= C-1 committed tokens, so C + k slots always suffice (`in_flight` = k; the draft
    writes fewer). A window layer's query attends to its `window` latest positions (itself included,
    transformers' sliding-window mask), so a ring buffer of window - 1 old plus k + 1 new positions,
    window + k, holds all any query of the step needs. No rounding: the engine allocates exactly this.
    """
    slots = max_context + in_flight
    if layer.window is not None:
        slots = min(slots, layer.window + in_flight)
    return slots


def kv_layer_slots_all(model: ModelShape, max_context: int, in_flight: int) -> tuple[int, ...]:
    """kv_layer_slots of each decoder layer."""
    return tuple(kv_layer_slots(layer, max_context, in_flight) for layer in model.cache_layers)


def kv_slots(model: ModelShape, max_context: int, draft_length: int) -> int:
    """The most KV positions any layer reserves per sequence: C + k where a layer has full attention
    (a model whose every layer has a window: window + k). What `verify_mask` and `draft_mask` span."""
    return max(kv_layer_slots_all(model, max_context, draft_length))


def window_slots(model: ModelShape, max_context: int, in_flight: int) -> int | None:
    """Slots of the model's sliding-window layers when they are fewer than `kv_slots` (those layers
    then need a mask of their own), else None. One window per model: each would need its own mask."""
    windows = {layer.window for layer in model.cache_layers if layer.window is not None}
    if len(windows) > 1:
        raise SpecMemoError(f"{model.name}: layers with different sliding windows {sorted(windows)} are not supported",
                            "each window would need a mask of its own")
    if not windows:
        return None
    slots = kv_layer_slots(CacheLayer(1, 0, 0, windows.pop()), max_context, in_flight)
    return slots if slots < kv_slots(model, max_context, in_flight) else None


def kv_layer_bytes(model: ModelShape, batch_size: int, max_context: int, in_flight: int, kv_dtype: str) -> tuple[int, ...]:
    """Each layer's cache: (K row bytes + V row bytes) * B * slots of that layer, a row being one token's
    kv_heads * k_dim (or * v_dim) values in the K (or V) type of `kv_dtype` ('fp16', or 'q8_0:fp16':
    kvtypes.kv_row_bytes; 16-bit types give kv_heads * (k_dim + v_dim) * 2).

    kv_heads is what the layer caches: the config's num_key_value_heads (GQA: Llama-2-70B has 8, not
    64), 1 for multi-query GPT-BigCode, and 1 for DeepSeek's latent (k_dim = kv_lora_rank, v_dim =
    qk_rope_head_dim: transformers caches the compressed latent and the shared RoPE key)."""
    return tuple(kv_row_pair_bytes(layer, kv_dtype) * batch_size * kv_layer_slots(layer, max_context, in_flight)
                 for layer in model.cache_layers)


def kv_row_pair_bytes(layer: CacheLayer, kv_dtype: str) -> int:
    """One token's K and V bytes in one layer; block types (llama.cpp's q8_0 ...) quantise each row in
    blocks per head (kvtypes.kv_row_bytes refuses a head size that is not whole blocks, as llama.cpp does)."""
    k_type, v_type = parse_kv_dtypes(kv_dtype)
    k = kv_row_bytes(k_type, layer.kv_heads * layer.k_dim, layer.k_dim, "K")
    v = kv_row_bytes(v_type, layer.kv_heads * layer.v_dim, layer.v_dim, "V")
    return k + v


def kv_cache_bytes(model: ModelShape | None, batch_size: int, max_context: int, in_flight: int, kv_dtype: str) -> int:
    """The static cache of B sequences planned for C tokens with k positions in flight: the sum over
    layers of kv_layer_bytes (each layer capped by its own window)."""
    if model is None:
        return 0
    return sum(kv_layer_bytes(model, batch_size, max_context, in_flight, kv_dtype))


def kv_token_bytes(model: ModelShape, kv_dtype: str) -> int:
    """Bytes one token adds to the cache over all layers while no window is full (display)."""
    return sum(kv_row_pair_bytes(layer, kv_dtype) for layer in model.cache_layers)


def candidate_buffer_specs(
    target: ModelShape, draft: ModelShape | None, knobs: Knobs
) -> list[BufferSpec]:
    """Tensors the engine preallocates for one speculative step (plain decoding: k = 0).

    - draft_tokens [B, k] int64: the proposals.
    - draft_logits [B, k, V_d]: the draft's logits per proposal over the draft's own vocabulary
      (sampling needs the draft's probability of each proposed token; greedy reads the argmax).
    - target_logits [B, k+1, V]: logits of the verify pass, only at the k+1 positions used, over the
      target's vocabulary V (a draft whose vocabulary is padded differently shares its tokens).
    - verify_mask [B, 1, k+1, S_t] bool and draft_mask [B, 1, 1, S_d] bool: attention masks over the
      static caches (S = kv_slots: the full-attention layers), rebuilt in place each step.
    - verify_mask_sliding [B, 1, k+1, S_w] and draft_mask_sliding [B, 1, 1, S_w_d] bool, only for a model
      whose sliding-window layers hold fewer slots than its full layers (window_slots): the mask over
      those layers' ring buffers.
    - lengths [B] int64: committed tokens per sequence (sequences accept different counts).
    """
    method = knobs.method(draft is not None)
    if method not in ("draft-model", "none"):
        from .drafting.buffers import method_buffer_specs

        return method_buffer_specs(target, draft, knobs, method)
    B, k, V = knobs.batch_size, knobs.draft_length, target.vocab_size
    target_slots = kv_slots(target, knobs.max_context, k)
    specs = [
        BufferSpec("target_logits", (B, k + 1, V), compute_dtype(knobs.weight_dtype)),
        BufferSpec("verify_mask", (B, 1, k + 1, target_slots), "bool"),
    ]
    t_window = window_slots(target, knobs.max_context, k)
    if t_window is not None:
        specs.append(BufferSpec("verify_mask_sliding", (B, 1, k + 1, t_window), "bool"))
    specs.append(BufferSpec("lengths", (B,), "int64"))
    if draft is not None and k > 0:
        draft_slots = kv_slots(draft, knobs.max_context, k)
        specs += [
            BufferSpec("draft_tokens", (B, k), "int64"),
            BufferSpec("draft_logits", (B, k, draft.vocab_size), compute_dtype(knobs.draft_dtype)),
            BufferSpec("draft_mask", (B, 1, 1, draft_slots), "bool"),
        ]
        d_window = window_slots(draft, knobs.max_context, k)
        if d_window is not None:
            specs.append(BufferSpec("draft_mask_sliding", (B, 1, 1, d_window), "bool"))
    return specs


def candidate_buffer_bytes(target: ModelShape, draft: ModelShape | None, knobs: Knobs) -> int:
    return sum(spec.nbytes for spec in candidate_buffer_specs(target, draft, knobs))


# ----------------------------------------------------------------------------- totals


def breakdown(
    target: ModelShape, draft: ModelShape | None, knobs: Knobs, device_overhead_bytes: int = 0
) -> MemoryBreakdown:
    """Every component in bytes. No draft (k = 0) gives plain decoding, the baseline."""
    from .activations import activation_bytes  # activations.py builds on this module

    knobs.validate(has_draft=draft is not None)
    k = knobs.draft_length
    return MemoryBreakdown(
        {
            "target_weights": weight_bytes(target, knobs.weight_dtype),
            "draft_weights": weight_bytes(draft, knobs.draft_dtype),
            "target_kv": kv_cache_bytes(target, knobs.batch_size, knobs.max_context, k, knobs.cache_dtype),
            "draft_kv": kv_cache_bytes(draft, knobs.batch_size, knobs.max_context, k, knobs.cache_dtype),
            "candidate_buffers": candidate_buffer_bytes(target, draft, knobs),
            "activations": activation_bytes(target, draft, knobs),
            # CUDA/HIP context and allocator slack: the hardware profile's runtime_overhead_bytes; 0 on CPU
            "runtime_overhead": device_overhead_bytes,
        }
    )


def plain_knobs(knobs: Knobs) -> Knobs:
    """The same knobs without speculation: the plain-decoding baseline (no draft, k = 0)."""
    return replace(knobs, draft_length=0, draft_weight_dtype=None, draft_method=None, tree_depth=None, tree_topk=None,
                   head_embedding=None)


def __getattr__(name: str):
    """The activation functions live in activations.py (which imports this module); `memory.X` still works."""
    if name in ("activation_bytes", "forward_activation_bytes", "target_activation_bytes"):
        from . import activations

        return getattr(activations, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
