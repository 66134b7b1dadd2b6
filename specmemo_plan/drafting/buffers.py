"""The tensors one speculative step keeps, per draft method other than a draft model (memory.py keeps
the draft-model and plain-decoding specs, which our engine allocates).

Notation: B batch, T verified draft tokens (knobs.draft_length; k for a chain), C planned context, V the
target's vocabulary, V_out the head's output vocabulary (EAGLE-3: V_d), H the target's hidden size, a tree
of `depth` steps and top-k `topk` (a chain: depth T, top-k 1). Sized as the serving engines keep them:
- target_logits [B, T+1, V] fp32: vLLM's rejection sampler and SGLang's sampler upcast the verify logits
  to fp32 (vllm-project/vllm#37521 sizes `[num_tokens + batch, V]`); our engine (draft-model) keeps them
  in the compute dtype;
- verify_mask [B, 1, T+1, C+T] bool (the tree mask over the KV slots; a full mask, as SGLang's FULL_MASK
  over the context), verify_mask_sliding over a window's slots when fewer, lengths [B] int64;
- n-gram: candidate_tokens [B, T] int64 (+ candidate_parents [B, T] int64 for a tree);
- heads: draft_tokens [B, T] int64; for a tree draft_tree_parents [B, T] int64 (the retrieve index) and
  draft_scores [B, depth, topk^2] fp32 (EAGLE-2's candidate scores per step); draft_logits
  [B, depth * topk, V_out] in the draft's compute dtype (Medusa: [B, heads, V], all heads every step);
  draft_hidden_states: the target hidden states kept for the next draft step, [B, T+1, 3H] for EAGLE-3
  (3 layers), [B, T+1, H] for EAGLE-1/2 and MTP, [B, 1, H] for Medusa (the last accepted token's);
  draft_mask [B, 1, topk, S_d] over the head's KV slots S_d = C + T (no KV, no mask: Medusa);
  EAGLE-3's vocabulary maps draft_d2t [V_d] int64 and draft_t2d [V] bool (SafeAILab/EAGLE cnets.py buffers);
  an EAGLE-1 head with a trimmed vocabulary (the bundled one) keeps d2t only (our engine maps ids back with it).
Not counted, stated: SGLang's temporary draft KV of B * topk * depth expanded nodes (freed after verify)
and CUDA-graph pools.
"""

from __future__ import annotations

from ..memory import BufferSpec, Knobs, compute_dtype, kv_slots, window_slots
from ..models import ModelShape

SAMPLER_LOGITS_DTYPE = "fp32"  # vLLM / SGLang samplers (module docstring)


def method_buffer_specs(target: ModelShape, draft: ModelShape | None, knobs: Knobs, method: str) -> list[BufferSpec]:
    B, T, V, C = knobs.batch_size, knobs.draft_length, target.vocab_size, knobs.max_context
    tree = knobs.tree
    specs = [
        BufferSpec("target_logits", (B, T + 1, V), SAMPLER_LOGITS_DTYPE),
        BufferSpec("verify_mask", (B, 1, T + 1, kv_slots(target, C, T)), "bool"),
    ]
    t_window = window_slots(target, C, T)
    if t_window is not None:
        specs.append(BufferSpec("verify_mask_sliding", (B, 1, T + 1, t_window), "bool"))
    specs.append(BufferSpec("lengths", (B,), "int64"))
    if method == "ngram":
        specs.append(BufferSpec("candidate_tokens", (B, T), "int64"))
        if not tree.is_chain:
            specs.append(BufferSpec("candidate_parents", (B, T), "int64"))
        return specs
    d_dtype = compute_dtype(knobs.draft_dtype)
    t_dtype = compute_dtype(knobs.weight_dtype)
    specs.append(BufferSpec("draft_tokens", (B, T), "int64"))
    if not tree.is_chain:
        specs += [BufferSpec("draft_tree_parents", (B, T), "int64"),
                  BufferSpec("draft_scores", (B, tree.depth, tree.topk * tree.topk), "fp32")]
    H = target.hidden_size
    if method == "medusa":
        specs += [BufferSpec("draft_logits", (B, len(draft.layer_params), draft.vocab_size), d_dtype),
                  BufferSpec("draft_hidden_states", (B, 1, H), t_dtype)]
        return specs
    width = 3 * H if method == "eagle3" else H
    specs += [BufferSpec("draft_logits", (B, tree.depth * tree.topk, draft.vocab_size), d_dtype),
              BufferSpec("draft_hidden_states", (B, T + 1, width), t_dtype),
              BufferSpec("draft_mask", (B, 1, tree.topk, kv_slots(draft, C, T)), "bool")]
    d_window = window_slots(draft, C, T)
    if d_window is not None:
        specs.append(BufferSpec("draft_mask_sliding", (B, 1, tree.topk, d_window), "bool"))
    if draft.vocab_size != V:  # a trimmed output vocabulary: d2t maps the head's ids back to the target's
        specs.append(BufferSpec("draft_d2t", (draft.vocab_size,), "int64"))
        if method == "eagle3":
            specs.append(BufferSpec("draft_t2d", (V,), "bool"))
    return specs
