"""Model-free drafting (prompt lookup, n-gram): what it keeps, and where.

Nothing on the device beyond the verify side (drafting/buffers.py: the candidate tokens, the verify
logits and mask, the C + T KV slots of the target): no weights, no draft KV. The matcher runs on the host:
- vLLM `ngram`: a CPU matcher over each request's own token ids (`prompt_lookup_min`/`prompt_lookup_max`);
- llama.cpp `ngram-mod`: "lightweight (~16 MB), constant memory" (docs/speculative.md), one pool for all slots;
- SGLang `NGRAM`: a trie of up to `--speculative-ngram-capacity` entries (10,000,000 by default).
The planner states the host bytes of the simplest (matching over the request's tokens) and never counts
them in a device budget.
"""

from __future__ import annotations

HOST_TOKEN_BYTES = 4  # int32 token ids, as the host-side matchers keep them (numpy int32 in vLLM)
LLAMA_CPP_NGRAM_MOD_BYTES = 16 * 2**20  # llama.cpp docs/speculative.md: "~16 MB, constant memory"


def host_index_bytes(batch_size: int, max_context: int) -> int:
    """Host bytes of matching over each request's own tokens: B * C int32 ids (not device memory)."""
    return batch_size * max_context * HOST_TOKEN_BYTES


def host_note(batch_size: int, max_context: int) -> str:
    from ..units import format_bytes

    return (f"n-gram drafting keeps its index in host memory, not counted here: about "
            f"{format_bytes(host_index_bytes(batch_size, max_context))} of token ids (B x C int32) for a matcher over "
            f"the requests' own tokens (vLLM ngram); llama.cpp's ngram-mod pool is a constant ~16 MB")
