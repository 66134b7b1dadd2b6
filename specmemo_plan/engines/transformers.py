"""transformers `generate` (5.24.0, the version installed with the project), plain and assisted.

Read from the installed sources:
- cache_utils.py DynamicLayer.update: `self.keys = torch.cat([self.keys, key_states], dim=-2)`: the cache
  grows by one concatenation per layer per step, so while a layer grows its old and new tensors coexist;
  sliding-window layers (DynamicSlidingWindowLayer) keep their last `sliding_window - 1` tokens plus the new.
- generation/utils.py: the prefill computes logits for the last position only when the model takes
  `logits_to_keep` (it is set to 1), then `outputs.logits[:, -1].to(copy=True, dtype=torch.float32)`.
- assisted generation (generation/utils.py `_assisted_decoding`): "assisted generate is only supported for
  batch_size = 1"; the verify pass keeps `logits_to_keep = candidate_length + 1` rows and makes
  `new_logits = logits.to(float32)` and a clone of it; candidate_generator.py keeps the assistant's k
  per-step fp32 scores and stacks them (`torch.stack(assistant_output.scores, dim=1)`).
The prompt is prefilled in one forward (no chunking): its activations are those of P tokens at once.
"""

from __future__ import annotations

from ..activations import forward_activation_bytes
from ..errors import SpecMemoError
from ..memory import Knobs, compute_dtype, dtype_bytes, weight_bytes
from ..models import ModelShape
from .base import MIB, EngineMemory, EngineOptions
from .specmemo import efficient_forward_bytes

VERSION = "transformers 5.24.0 generate"
CODE = "huggingface/transformers v5.24.0 src/transformers"
DEFAULT_CONTEXT = 512 * MIB  # assumed CUDA context, as the hardware profiles (profiles/titan-rtx.toml)
SOURCES = {
    "kv_cache_bytes": f"{CODE}/cache_utils.py DynamicLayer / DynamicSlidingWindowLayer.update",
    "sampler_bytes": f"{CODE}/generation/utils.py (logits_to_keep, fp32 copies), candidate_generator.py",
    "activation_peak_bytes": "specmemo_plan/activations.py for the prompt in one forward (SDPA math or efficient)",
}


def dynamic_cache_bytes(model: ModelShape | None, batch: int, tokens: int, kv_dtype: str) -> int:
    """B * sum over layers of elements per token * min(tokens, window) * b (the cache when full)."""
    if model is None:
        return 0
    b = dtype_bytes(kv_dtype)
    return sum(batch * layer.elements_per_token * b * (min(tokens, layer.window) if layer.window else tokens)
               for layer in model.cache_layers)


def growth_bytes(model: ModelShape | None, batch: int, tokens: int, kv_dtype: str) -> int:
    """The largest layer's cache once more: torch.cat holds the old and the new tensor of one layer."""
    if model is None:
        return 0
    b = dtype_bytes(kv_dtype)
    return max(batch * layer.elements_per_token * b * (min(tokens, layer.window) if layer.window else tokens)
               for layer in model.cache_layers)


def logits_bytes(vocab: int, batch: int, k: int, dtype: str) -> int:
    """Plain: the last row in the model dtype and its fp32 copy, (b + 4) B V. Assisted (k > 0): the verify
    rows (b + 4 + 4) B (k + 1) V (logits, fp32, clone) and the assistant's k fp32 scores, kept and stacked,
    8 B k V."""
    b = dtype_bytes(compute_dtype(dtype))
    if k == 0:
        return (b + 4) * batch * vocab
    return (b + 8) * batch * (k + 1) * vocab + 8 * batch * k * vocab


def prefill_bytes(model: ModelShape, batch: int, prompt: int, context: int, dtype: str, backend: str) -> int:
    """The prompt's forward at once: activations.py with the score matrix ("math"), or without it."""
    dtype = compute_dtype(dtype)
    if backend == "math":
        return forward_activation_bytes(model, batch, prompt, context, 0, dtype)
    return efficient_forward_bytes(model, batch, prompt, context, 0, dtype)


def memory(target: ModelShape, draft: ModelShape | None, knobs: Knobs, options: EngineOptions,
           device_total_bytes: int, tp: int = 1) -> EngineMemory:
    """generate's peak on one device (module docstring)."""
    if tp != 1:
        raise SpecMemoError("transformers generate runs on one device per layer (device_map), not tensor-parallel",
                            "use --tensor-parallel-size 1")
    B, C, k = knobs.batch_size, knobs.max_context, knobs.draft_length
    if draft is not None and B > 1:
        raise SpecMemoError("assisted generate is only supported for batch_size = 1 (transformers 5.24)",
                            "use --batch 1 with a draft")
    kv_dtype = compute_dtype(knobs.weight_dtype)
    if knobs.kv_dtype not in (None, kv_dtype):
        raise SpecMemoError(f"transformers' DynamicCache stores the model dtype ({kv_dtype}), not {knobs.kv_dtype}",
                            "leave the KV dtype out for transformers")
    backend = options.sdpa_backend or "efficient"
    prompt = min(options.prompt_tokens or C, C)
    target_w = weight_bytes(target, knobs.weight_dtype)
    draft_w = weight_bytes(draft, knobs.draft_dtype)
    target_kv = dynamic_cache_bytes(target, B, C, kv_dtype)
    draft_kv = dynamic_cache_bytes(draft, B, C, kv_dtype)
    growth = max(growth_bytes(target, B, C, kv_dtype), growth_bytes(draft, B, C, kv_dtype))
    activation = prefill_bytes(target, B, prompt, C, knobs.weight_dtype, backend)
    if draft is not None:
        activation = max(activation, prefill_bytes(draft, B, prompt, C, knobs.draft_dtype, backend))
    sampler = logits_bytes(target.vocab_size, B, k, knobs.weight_dtype)
    context = DEFAULT_CONTEXT if options.cuda_context_bytes is None else options.cuda_context_bytes
    total = context + target_w + draft_w + target_kv + draft_kv + max(growth + sampler, activation)
    assumptions = [f"the prompt ({prompt} tokens) prefilled in one forward, SDPA {backend}",
                   f"CUDA context {context / MIB:.0f} MiB (assumed)"]
    error = None
    if device_total_bytes and total > device_total_bytes:
        error = "torch.OutOfMemoryError: CUDA out of memory"
    return EngineMemory(
        engine="transformers", version=VERSION, weights_bytes=target_w + draft_w, target_weights_bytes=target_w,
        draft_weights_bytes=draft_w, kv_cache_bytes=target_kv + draft_kv, target_kv_cache_bytes=target_kv,
        draft_kv_cache_bytes=draft_kv, kv_cache_tokens=B * C, max_concurrency=float(B),
        activation_peak_bytes=activation, compute_buffer_bytes=None, non_torch_bytes=0, cuda_graph_bytes=0,
        sampler_bytes=sampler, cuda_context_bytes=context, total_bytes=total, startup_error=error,
        settings={"max_length": C, "num_assistant_tokens": k} if k else {"max_length": C},
        sources=dict(SOURCES), assumptions=tuple(assumptions),
    )


def startup_lines(m: EngineMemory) -> tuple[str, ...]:
    """No startup log of its memory: the error it would raise, if any."""
    return (m.startup_error,) if m.startup_error else ()
