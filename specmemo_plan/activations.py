"""Transient memory of one forward: the peak of a decoder layer, per layer type (estimate).

Notation as memory.py: B batch, n tokens of the forward, S_l the cache slots layer l attends to
(memory.kv_layer_slots: windowed layers see their ring buffer, full layers C + k), H hidden, I dense MLP
width, b the compute dtype's bytes. Every layer's peak is the residual stream and its normed copy, 2 B n H,
plus the larger of its attention and its MLP; the forward's peak is the largest layer's, plus the 4D bool
masks (one over the full layers' slots, one over the window layers' when they are fewer).

Attention, standard (our reconstruction from transformers' Llama layer code with SDPA; checked on GPUs in
bench/gpu_validate.py): B n (q + 2 kv + q) for the q/k/v/output projections, 2 B h S d for K/V expanded
to all h heads (GQA repeat), B h n S scores (the math SDPA kernel materialises them; CPU and short queries
use it).
Attention, latent (DeepSeek-V2/V3, transformers 5.24 modeling_deepseek_v3.py DeepseekV3Attention.forward
and expand_kv): B n (h d_qk) for q, B n (r_kv + d_r) for the compressed kv, B n (h d_qk) for the
concatenated query, B n (h d_v) for the output; then expand_kv turns the cached latent of all S positions
into per-head keys and values: kv_b_proj's B S h (d_n + d_v) and the new key tensor B h S (d_n + d_r);
B h n S scores. (The value is a view of kv_b_proj's output.)
MLP: dense 3 B n I (gate, up, their product). Routed experts (transformers' eager MoE loop, e.g.
MixtralExperts.forward): the output accumulator, the router's logits and fp32 probabilities, and one
expert at a time on at most all B n tokens (its gathered input, gate_up, the product):
B n (3 H + 3 I_e + 2 E). Shared experts (DeepSeek) run after the routed ones, beside their output:
B n (H + 3 I_s).

An upper bound for our engine, which packs grouped-query heads instead of expanding K/V
(engine/attention.py) and whose CPU SDPA (flash kernel) does not materialise scores. On CPU,
SmolLM2 fp32 with the context filled (1024 slots; `worst_case_activations` in engine/workflow.py), the
process's peak RSS growth with glibc's mmap threshold fixed at 128 KiB (so freed tensors leave the
process) was 46.0 / 13.8 / 37.4 / 123.6 / 25.1 MiB against 52.1 / 16.4 / 56.6 / 208.3 / 41.8 MiB
predicted (B x chunk = 1x1024, 1x256, 2x512, 4x1024, 4x128). With glibc's default dynamic threshold the
heap keeps freed blocks and the same runs peaked 15-60% above the prediction: allocator slack, not
tensors (README, "Memory on CPU").
"""

from __future__ import annotations

from .memory import BOOL_BYTES, Knobs, compute_dtype, dtype_bytes, kv_layer_slots, kv_slots, window_slots
from .models import CacheLayer, ModelShape


def attention_elements(model: ModelShape, layer: CacheLayer, batch_size: int, num_tokens: int, slots: int) -> int:
    """Peak elements of one layer's attention over `slots` cached positions (module docstring)."""
    B, n, S, h = batch_size, num_tokens, slots, model.num_attention_heads
    mla = model.latent
    if mla is not None:
        q_lora = mla.q_lora_rank or 0
        per_token = 2 * h * mla.qk_head_dim + mla.kv_lora_rank + mla.qk_rope_head_dim + h * mla.v_head_dim + q_lora
        expanded = B * S * h * ((mla.qk_nope_head_dim + mla.v_head_dim) + mla.qk_head_dim)
        return B * n * per_token + expanded + B * h * n * S
    d = layer.k_dim
    q, kv = h * d, layer.kv_heads * d
    return B * n * (2 * q + 2 * kv) + 2 * B * h * S * d + B * h * n * S


def mlp_elements(model: ModelShape, batch_size: int, num_tokens: int, moe: bool) -> int:
    """Peak elements of one layer's MLP (module docstring)."""
    T, H = batch_size * num_tokens, model.hidden_size
    experts = model.experts
    if not moe or experts is None:
        return 3 * T * model.intermediate_size
    routed = T * (3 * H + 3 * experts.intermediate_size + 2 * experts.num_experts)
    shared = T * (H + 3 * experts.shared_intermediate_size) if experts.shared_intermediate_size else 0
    return max(routed, shared)


def _moe_layers(model: ModelShape) -> set[int]:
    return {i for m in model.matrices if m.expert for i in m.layers}


def forward_activation_bytes(model: ModelShape, batch_size: int, num_tokens: int, max_context: int,
                             in_flight: int, dtype: str) -> int:
    """Peak transient bytes of one forward of B x n tokens, the caches planned for C tokens with
    `in_flight` (k) positions in flight: the largest layer type's peak plus the masks (module docstring)."""
    B, n = batch_size, num_tokens
    residual = 2 * B * n * model.hidden_size
    moe = _moe_layers(model)
    peaks = {}
    for index, layer in enumerate(model.cache_layers):
        key = (layer, index in moe)
        if key not in peaks:
            slots = kv_layer_slots(layer, max_context, in_flight)
            attention = attention_elements(model, layer, B, n, slots)
            peaks[key] = residual + max(attention, mlp_elements(model, B, n, index in moe))
    masks = kv_slots(model, max_context, in_flight) + (window_slots(model, max_context, in_flight) or 0)
    return max(peaks.values()) * dtype_bytes(dtype) + B * n * masks * BOOL_BYTES


def target_activation_bytes(target: ModelShape, knobs: Knobs) -> int:
    """Peak transient of a target forward: a prefill chunk or the verify pass of k + 1 tokens."""
    B, k, C = knobs.batch_size, knobs.draft_length, knobs.max_context
    dtype = compute_dtype(knobs.weight_dtype)
    return max(forward_activation_bytes(target, B, knobs.chunk, C, k, dtype),
               forward_activation_bytes(target, B, k + 1, C, k, dtype))


def activation_bytes(target: ModelShape, draft: ModelShape | None, knobs: Knobs) -> int:
    """The largest forward the plan allows: a prefill chunk or the verify pass (target),
    a prefill chunk or a draft step (draft). One forward runs at a time, so take the max."""
    candidates = [target_activation_bytes(target, knobs)]
    if draft is not None and knobs.draft_length > 0 and not draft.cache_layers:
        candidates.append(medusa_activation_bytes(draft, knobs))
    elif draft is not None and knobs.draft_length > 0:
        d_dtype = compute_dtype(knobs.draft_dtype)
        candidates.append(forward_activation_bytes(draft, knobs.batch_size, knobs.chunk, knobs.max_context,
                                                   knobs.draft_length, d_dtype))
    return max(candidates)


def medusa_activation_bytes(draft: ModelShape, knobs: Knobs) -> int:
    """Medusa's heads (no cache layers) run on one hidden state per sequence: each head's ResBlock output
    and logits, B * heads * (H + V) elements in the draft's compute dtype (the heads run one after another
    in vLLM's medusa.py; this keeps all of them, an upper bound)."""
    heads = len(draft.layer_params)
    return knobs.batch_size * heads * (draft.hidden_size + draft.vocab_size) * dtype_bytes(compute_dtype(knobs.draft_dtype))
