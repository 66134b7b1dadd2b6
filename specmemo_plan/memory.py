"""The memory model of speculative decoding: one small pure function per component.

Notation (docs/memory-model.md): B batch, C planned context per sequence (prompt + new tokens), k draft
length, V vocabulary; per model L layers, n_kv KV heads, d head_dim, b_w bytes per weight,
b_kv bytes per KV element.

The static components (weights, KV, candidate buffers) are also the engine's allocation policy:
`engine/` allocates exactly `kv_slots` positions and exactly the `candidate_buffer_specs` tensors,
so prediction and allocation agree to the byte (tests check it on CPU). The transient parts
(activations, runtime overhead) are estimates, checked against measurement on a device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .errors import SpecMemoError
from .models import ModelShape

# Bits per stored element. Weight-only quantised formats (fp8, int8, int4) compute in fp16.
DTYPE_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}
FLOAT_DTYPES = ("fp32", "fp16", "bf16")
WEIGHT_DTYPES = tuple(DTYPE_BITS)
KV_DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8")
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
    """dtype of activations and logits: the weight dtype, or fp16 for quantised weights."""
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

    @property
    def draft_dtype(self) -> str:
        return self.draft_weight_dtype or self.weight_dtype

    @property
    def cache_dtype(self) -> str:
        return self.kv_dtype or compute_dtype(self.weight_dtype)

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
        if has_draft and self.draft_length == 0:
            raise SpecMemoError("draft_length is 0 but a draft model is given", "use --draft-length >= 1, or drop --draft")
        if not has_draft and self.draft_length:
            raise SpecMemoError(f"draft_length {self.draft_length} needs a draft model", "add --draft")
        if self.prefill_chunk is not None and self.prefill_chunk <= 0:
            raise SpecMemoError(f"prefill_chunk must be positive, got {self.prefill_chunk}")
        for name, value, allowed in (
            ("weight_dtype", self.weight_dtype, WEIGHT_DTYPES),
            ("draft_weight_dtype", self.draft_dtype, WEIGHT_DTYPES),
            ("kv_dtype", self.cache_dtype, KV_DTYPES),
        ):
            if value not in allowed:
                raise SpecMemoError(f"{name} {value!r} is not known", "choose one of: " + ", ".join(allowed))
        return self


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

    Quantised formats replace only the decoder layers' weight matrices (`ModelShape.layer_linears`);
    embeddings, output layer, norms and biases stay in fp16, as GPTQ/AWQ/bitsandbytes/FP8 checkpoints do.
    Scale overhead, per weight matrix of shape (out, in):
    - fp8: one fp32 scale per tensor (per-tensor FP8 as in vLLM's `fp8` and FBGEMM checkpoints).
    - int8: one fp32 scale per output row (bitsandbytes LLM.int8 `SCB`, Dettmers et al. 2022).
    - int4: an fp16 scale and an fp16 zero per group of 128 inputs (GPTQ/AWQ default grouping).
    """
    if model is None:
        return 0
    if dtype in FLOAT_DTYPES:
        return model.num_params * dtype_bytes(dtype)
    quantised = model.num_layers * sum(o * i for o, i in model.layer_linears)
    rest = (model.num_params - quantised) * dtype_bytes("fp16")
    per_layer_overhead = 0
    for out_features, in_features in model.layer_linears:
        if dtype == "fp8":
            per_layer_overhead += 4
        elif dtype == "int8":
            per_layer_overhead += 4 * out_features
        else:  # int4
            per_layer_overhead += 2 * 2 * out_features * math.ceil(in_features / INT4_GROUP_SIZE)
    packed = quantised * DTYPE_BITS[dtype] // 8
    return packed + model.num_layers * per_layer_overhead + rest


def kv_slots(model: ModelShape, max_context: int, draft_length: int) -> int:
    """KV positions the engine reserves per sequence: C + k.

    A verify pass writes the last accepted token and k drafts at positions L-1 .. L-1+k while the
    sequence holds L <= C-1 committed tokens, so C + k slots always suffice; the draft writes fewer.
    No rounding: the engine allocates exactly this. A sliding-window model needs at most its
    window plus the k in-flight positions (its config's `sliding_window`).
    """
    slots = max_context + draft_length
    if model.sliding_window:
        slots = min(slots, model.sliding_window + draft_length)
    return slots


def kv_cache_bytes(model: ModelShape | None, batch_size: int, slots: int, kv_dtype: str) -> int:
    """2 (K and V) * L * n_kv * d * b_kv * B * slots.

    n_kv is the config's num_key_value_heads (GQA: Llama-2-70B has 8, not 64) and d its head_dim.
    """
    if model is None:
        return 0
    return model.kv_bytes_per_token_per_element * dtype_bytes(kv_dtype) * batch_size * slots


def candidate_buffer_specs(
    target: ModelShape, draft: ModelShape | None, knobs: Knobs
) -> list[BufferSpec]:
    """Tensors the engine preallocates for one speculative step (plain decoding: k = 0).

    - draft_tokens [B, k] int64: the proposals.
    - draft_logits [B, k, V]: the draft's logits per proposal (sampling needs the draft's
      probability of each proposed token; greedy reads the argmax).
    - target_logits [B, k+1, V]: logits of the verify pass, only at the k+1 positions used.
    - verify_mask [B, 1, k+1, S_t] bool and draft_mask [B, 1, 1, S_d] bool: attention masks over the
      static caches, rebuilt in place each step.
    - lengths [B] int64: committed tokens per sequence (sequences accept different counts).
    """
    B, k, V = knobs.batch_size, knobs.draft_length, target.vocab_size
    target_slots = kv_slots(target, knobs.max_context, k)
    specs = [
        BufferSpec("target_logits", (B, k + 1, V), compute_dtype(knobs.weight_dtype)),
        BufferSpec("verify_mask", (B, 1, k + 1, target_slots), "bool"),
        BufferSpec("lengths", (B,), "int64"),
    ]
    if draft is not None and k > 0:
        draft_slots = kv_slots(draft, knobs.max_context, k)
        specs += [
            BufferSpec("draft_tokens", (B, k), "int64"),
            BufferSpec("draft_logits", (B, k, V), compute_dtype(knobs.draft_dtype)),
            BufferSpec("draft_mask", (B, 1, 1, draft_slots), "bool"),
        ]
    return specs


def candidate_buffer_bytes(target: ModelShape, draft: ModelShape | None, knobs: Knobs) -> int:
    return sum(spec.nbytes for spec in candidate_buffer_specs(target, draft, knobs))


def forward_activation_bytes(model: ModelShape, batch_size: int, num_tokens: int, slots: int, dtype: str) -> int:
    """Peak transient bytes of one forward of B x n tokens over a cache of S slots (estimate).

    Live at the peak of a decoder layer, in the compute dtype b (our reconstruction from the
    layer code of transformers' Llama with SDPA; checked on GPUs in bench/gpu_validate.py):
    - the residual stream and its normed copy: 2 * B * n * H;
    - then the larger of attention, B*n*(q + 2kv + q) for q/k/v/output projections plus
      2 * B * heads * S * d for K/V expanded to all heads (GQA repeat) plus B * heads * n * S scores
      (the math SDPA kernel materialises them; CPU and short queries use it),
      and the MLP, 3 * B * n * I (gate, up, and their product);
    - the 4D bool attention mask B * n * S.
    An upper bound for our engine, which packs grouped-query heads instead of expanding K/V
    (engine/attention.py) and whose CPU SDPA (flash kernel) does not materialise scores. On CPU,
    SmolLM2 fp32 with the context filled (1024 slots; `worst_case_activations` in engine/workflow.py), the
    process's peak RSS growth with glibc's mmap threshold fixed at 128 KiB (so freed tensors
    leave the process) was 46.0 / 13.8 / 37.4 / 123.6 / 25.1 MiB against 52.1 / 16.4 / 56.6 /
    208.3 / 41.8 MiB predicted (B x chunk = 1x1024, 1x256, 2x512, 4x1024, 4x128). With glibc's
    default dynamic threshold the heap keeps freed blocks and the same runs peaked 15-60% above
    the prediction: allocator slack, not tensors (README, "Memory on CPU").
    """
    b = dtype_bytes(dtype)
    B, n, S = batch_size, num_tokens, slots
    q = model.num_attention_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    residual = 2 * B * n * model.hidden_size
    attention = B * n * (2 * q + 2 * kv) + 2 * B * model.num_attention_heads * S * model.head_dim
    attention += B * model.num_attention_heads * n * S
    mlp = 3 * B * n * model.intermediate_size
    return (residual + max(attention, mlp)) * b + B * n * S * BOOL_BYTES


def activation_bytes(target: ModelShape, draft: ModelShape | None, knobs: Knobs) -> int:
    """The largest forward the plan allows: a prefill chunk or the verify pass (target),
    a prefill chunk or a draft step (draft). One forward runs at a time, so take the max."""
    B, k = knobs.batch_size, knobs.draft_length
    t_slots = kv_slots(target, knobs.max_context, k)
    t_dtype = compute_dtype(knobs.weight_dtype)
    candidates = [
        forward_activation_bytes(target, B, knobs.chunk, t_slots, t_dtype),
        forward_activation_bytes(target, B, k + 1, t_slots, t_dtype),
    ]
    if draft is not None and k > 0:
        d_slots = kv_slots(draft, knobs.max_context, k)
        d_dtype = compute_dtype(knobs.draft_dtype)
        candidates.append(forward_activation_bytes(draft, B, knobs.chunk, d_slots, d_dtype))
    return max(candidates)


# ----------------------------------------------------------------------------- totals


def breakdown(
    target: ModelShape, draft: ModelShape | None, knobs: Knobs, device_overhead_bytes: int = 0
) -> MemoryBreakdown:
    """Every component in bytes. No draft (k = 0) gives plain decoding, the baseline."""
    knobs.validate(has_draft=draft is not None)
    k = knobs.draft_length
    return MemoryBreakdown(
        {
            "target_weights": weight_bytes(target, knobs.weight_dtype),
            "draft_weights": weight_bytes(draft, knobs.draft_dtype),
            "target_kv": kv_cache_bytes(
                target, knobs.batch_size, kv_slots(target, knobs.max_context, k), knobs.cache_dtype
            ),
            "draft_kv": kv_cache_bytes(
                draft, knobs.batch_size, kv_slots(draft, knobs.max_context, k), knobs.cache_dtype
            )
            if draft is not None
            else 0,
            "candidate_buffers": candidate_buffer_bytes(target, draft, knobs),
            "activations": activation_bytes(target, draft, knobs),
            # CUDA/HIP context and allocator slack: the hardware profile's runtime_overhead_bytes; 0 on CPU
            "runtime_overhead": device_overhead_bytes,
        }
    )


def plain_knobs(knobs: Knobs) -> Knobs:
    """The same knobs without speculation: the plain-decoding baseline (no draft, k = 0)."""
    return replace(knobs, draft_length=0, draft_weight_dtype=None)
