"""One model over its static cache: explicit positions, a 4D mask, logits only where they are used.

We run the decoder body (`model.model`) ourselves instead of `model(...)`:
- `position_ids` [B, n] are per row (rows sit at different lengths), so RoPE is right for each row;
- the mask is a 4D bool tensor [B, 1, n, R] (transformers' `create_causal_mask` returns a 4D mask
  as it is): key slot s is visible to the query at position p iff s <= p;
- the last hidden states go through the output layer only at the positions we need, straight into
  a preallocated buffer, so no [B, n, V] logits tensor exists for a prompt.
"""

from __future__ import annotations

import inspect

import torch

from .attention import packed_attention
from .cache import StaticKVCache


class Decoder:
    def __init__(self, model: torch.nn.Module, cache: StaticKVCache):
        self.model = model
        self.body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self.head = model.get_output_embeddings().weight  # [V, H]; tied to the embedding when the config says so
        self.cache = cache
        self.device = self.head.device
        # transformers 5.x renamed `past_key_values` to `cache` (the old name goes in 5.40)
        params = inspect.signature(self.body.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def forward(
        self, input_ids: torch.Tensor, starts: list[int], mask: torch.Tensor, start_tensor: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden states [B, n, H] of `input_ids` [B, n] placed at positions starts[b] + j.

        `mask` is a bool buffer [B, 1, >= n, >= R] filled in place (R = slots read: the longest row).
        `start_tensor` is `starts` already on the device (the speculative step computes it there)."""
        n = input_ids.shape[1]
        if start_tensor is None:
            start_tensor = torch.tensor(starts, dtype=torch.long, device=self.device)
        positions = start_tensor.unsqueeze(1) + torch.arange(n, device=self.device)
        self.cache.set_write(starts, n)
        read = self.cache.read_length
        view = mask[: input_ids.shape[0], :, :n, :read]
        torch.le(torch.arange(read, device=self.device), positions[:, None, :, None], out=view)
        with packed_attention(self.model.config):  # no per-head K/V copies for grouped-query attention
            out = self.body(
                input_ids=input_ids, attention_mask=view, position_ids=positions, use_cache=True,
                **{self._cache_kwarg: self.cache},
            )
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> out [..., V], written into the caller's buffer."""
        if hidden.dim() == 1:
            return torch.mv(self.head, hidden, out=out)
        return torch.matmul(hidden, self.head.t(), out=out)
