"""This project's engine (engine/): the planner's own breakdown, which the engine allocates to the byte.

`memory.breakdown` gives every part; this module renames them to the engine-result names and picks the
activation estimate for the SDPA kernel the engine will get:
- "math" (the default, today's estimate): the score matrix B h n S is materialised (CPU and short
  queries; activations.py);
- "efficient": PyTorch routes SDPA with a boolean mask on CUDA to the memory-efficient kernel, which keeps
  no score matrix (torch.nn.functional.scaled_dot_product_attention docs, "memory-efficient attention
  supports arbitrary attention masks"); the peak is then the rest of the layer.
The runtime overhead (CUDA/HIP context) is the caller's: the hardware profile's `runtime_overhead_bytes`
or what `specmemo-plan devices` measured, passed as EngineOptions.cuda_context_bytes.
"""

from __future__ import annotations

from ..activations import attention_elements, mlp_elements
from ..errors import SpecMemoError
from ..memory import (BOOL_BYTES, Knobs, breakdown, compute_dtype, dtype_bytes, kv_layer_slots, kv_slots,
                      window_slots)
from ..models import ModelShape
from .base import EngineMemory, EngineOptions

VERSION = "specmemo-plan engine (this repository)"
SOURCES = {
    "weights_bytes": "specmemo_plan/memory.py weight_bytes",
    "kv_cache_bytes": "specmemo_plan/memory.py kv_cache_bytes (engine/ allocates exactly this)",
    "activation_peak_bytes": "specmemo_plan/activations.py (math SDPA) or efficient_forward_bytes (no scores)",
    "sampler_bytes": "specmemo_plan/memory.py candidate_buffer_specs (logits, masks, draft tokens)",
    "cuda_context_bytes": "the caller's runtime overhead (hardware profile or a measured context)",
}


def _moe_layers(model: ModelShape) -> set[int]:
    return {i for m in model.matrices if m.expert for i in m.layers}


def efficient_forward_bytes(model: ModelShape, batch: int, tokens: int, max_context: int, in_flight: int,
                            dtype: str, masks: bool = True) -> int:
    """activations.forward_activation_bytes without the score matrix: per layer type
    2 B n H + max(attention - B h n S, mlp), times b, plus the bool masks when `masks`."""
    B, n = batch, tokens
    residual = 2 * B * n * model.hidden_size
    moe = _moe_layers(model)
    peak = 0
    for index, layer in enumerate(model.cache_layers):
        slots = kv_layer_slots(layer, max_context, in_flight)
        attention = attention_elements(model, layer, B, n, slots) - B * model.num_attention_heads * n * slots
        peak = max(peak, residual + max(attention, mlp_elements(model, B, n, index in moe)))
    mask = kv_slots(model, max_context, in_flight) + (window_slots(model, max_context, in_flight) or 0)
    return peak * dtype_bytes(dtype) + (B * n * mask * BOOL_BYTES if masks else 0)


def efficient_activation_bytes(target: ModelShape, draft: ModelShape | None, knobs: Knobs) -> int:
    """The largest forward the plan allows (activations.activation_bytes), no score matrix."""
    B, k, C = knobs.batch_size, knobs.draft_length, knobs.max_context
    t_dtype = compute_dtype(knobs.weight_dtype)
    candidates = [efficient_forward_bytes(target, B, knobs.chunk, C, k, t_dtype),
                  efficient_forward_bytes(target, B, k + 1, C, k, t_dtype)]
    if draft is not None and k > 0:
        candidates.append(efficient_forward_bytes(draft, B, knobs.chunk, C, k, compute_dtype(knobs.draft_dtype)))
    return max(candidates)


def memory(target: ModelShape, draft: ModelShape | None, knobs: Knobs, options: EngineOptions,
           device_total_bytes: int, tp: int = 1) -> EngineMemory:
    """memory.breakdown under the engine-result names (module docstring)."""
    if tp != 1:
        raise SpecMemoError("this engine splits layers over devices, not tensors",
                            "use plan --devices for several GPUs, with --tensor-parallel-size 1")
    context = options.cuda_context_bytes or 0
    parts = dict(breakdown(target, draft, knobs, context).components)
    backend = options.sdpa_backend or "math"
    if backend == "efficient":
        parts["activations"] = efficient_activation_bytes(target, draft, knobs)
    weights = parts["target_weights"] + parts["draft_weights"]
    kv = parts["target_kv"] + parts["draft_kv"]
    total = sum(parts.values())
    assumptions = [f"SDPA {backend}: " + ("the score matrix is materialised (an upper bound on CUDA)"
                                          if backend == "math" else "no score matrix (CUDA memory-efficient kernel)")]
    if options.cuda_context_bytes is None:
        assumptions.append("no runtime overhead given (CPU, or pass the hardware profile's)")
    error = None
    if device_total_bytes and total > device_total_bytes:
        error = f"the plan needs {total:,} bytes, more than the device's {device_total_bytes:,}"
    slots = knobs.max_context + knobs.draft_length
    return EngineMemory(
        engine="specmemo", version=VERSION, weights_bytes=weights, target_weights_bytes=parts["target_weights"],
        draft_weights_bytes=parts["draft_weights"], kv_cache_bytes=kv, target_kv_cache_bytes=parts["target_kv"],
        draft_kv_cache_bytes=parts["draft_kv"], kv_cache_tokens=knobs.batch_size * slots,
        max_concurrency=float(knobs.batch_size), activation_peak_bytes=parts["activations"],
        compute_buffer_bytes=None, non_torch_bytes=0, cuda_graph_bytes=0, sampler_bytes=parts["candidate_buffers"],
        cuda_context_bytes=parts["runtime_overhead"], total_bytes=total, budget_bytes=None, startup_error=error,
        settings={"--batch": knobs.batch_size, "--context": knobs.max_context, "--draft-length": knobs.draft_length,
                  "sdpa": backend},
        sources=dict(SOURCES), assumptions=tuple(assumptions),
    )


def startup_lines(m: EngineMemory) -> tuple[str, ...]:
    """No startup log of its memory: the error it would raise, if any."""
    return (m.startup_error,) if m.startup_error else ()
