"""Preallocated KV caches and step buffers, sized from the plan by specmemo_plan.memory.

One definition: `kv_slots` gives the positions per sequence, `candidate_buffer_specs` the step
buffers. This module allocates exactly those tensors, once, before generation, and never grows them;
tests check the bytes against the plan's prediction to the byte.

Slot index == absolute position in the sequence. A forward writes the K/V of its tokens at each
row's own positions (rows of a batch sit at different lengths), and attention sees slot s from a
query at position p iff s <= p. Rejected drafts are not erased: their slots lie beyond the row's
committed length, and the next forward rewrites them before any query can see them.
"""

from __future__ import annotations

import torch

from specmemo_plan.memory import Knobs, candidate_buffer_specs, kv_slots
from specmemo_plan.models import ModelShape

TORCH_DTYPES = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int64": torch.int64, "bool": torch.bool,
}


class StaticKVCache:
    """K and V of every layer: [B, n_kv_heads, slots, head_dim] each, in the plan's KV dtype.

    It speaks the part of transformers' Cache protocol that the decoder layers use: `update(k, v,
    layer_idx, ...)` stores the new K/V and returns the keys/values attention reads. Before each
    forward the caller sets where the new tokens go (`set_write`).
    """

    is_compileable = False

    def __init__(self, shape: ModelShape, batch_size: int, slots: int, dtype: str, device, layer_devices=None):
        self.shape = shape
        self.batch_size = batch_size
        self.slots = slots
        self.dtype = TORCH_DTYPES[dtype]
        size = (batch_size, shape.num_kv_heads, slots, shape.head_dim)
        # one device for all layers, or each layer's own in a multi-device plan (engine/placement.py)
        devices = layer_devices or [device] * shape.num_layers
        # zeros, not empty: the pages are touched now, so measured process memory sees them at once
        self.keys = [torch.zeros(size, dtype=self.dtype, device=d) for d in devices]
        self.values = [torch.zeros(size, dtype=self.dtype, device=d) for d in devices]
        self._start: int | None = None  # all rows write from the same position: a slice copy
        self._starts: list[int] = []  # each row's first position (rows at different lengths)
        self._read = slots  # slots attention reads: 0 .. longest live row
        self._batch = batch_size

    def tensors(self) -> list[torch.Tensor]:
        return self.keys + self.values

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def set_write(self, starts: list[int], num_tokens: int) -> None:
        """The next forward writes `num_tokens` tokens per row at positions starts[b] .. starts[b]+n-1
        (`starts` on the host: they decide slicing without a sync)."""
        self._batch = len(starts)  # rows in use: the first rows of the preallocated batch
        # all rows at one position: one slice copy; else a slice copy per row (host-side starts,
        # no sync; index_put_ over [B, n] positions was the slower path on CPU)
        self._start = starts[0] if len(set(starts)) == 1 else None
        self._starts = starts
        self._read = max(starts) + num_tokens
        if self._read > self.slots:
            raise RuntimeError(f"write up to position {self._read} beyond the {self.slots} preallocated slots")

    @property
    def read_length(self) -> int:
        return self._read

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self.keys[layer_idx][: self._batch], self.values[layer_idx][: self._batch]
        n = key_states.shape[2]
        if self._start is not None:
            keys[:, :, self._start : self._start + n].copy_(key_states)
            values[:, :, self._start : self._start + n].copy_(value_states)
        else:
            for row, start in enumerate(self._starts):
                keys[row, :, start : start + n].copy_(key_states[row])
                values[row, :, start : start + n].copy_(value_states[row])
        k, v = keys[:, :, : self._read], values[:, :, : self._read]
        if k.dtype != key_states.dtype:  # a KV dtype other than the compute dtype: cast on read
            k, v = k.to(key_states.dtype), v.to(value_states.dtype)
        return k, v

    # transformers calls these only when position_ids or a 2D mask are missing; we pass both.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._read

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.slots


class StepBuffers:
    """The tensors of `candidate_buffer_specs`, allocated by iterating the specs (they cannot drift)."""

    def __init__(self, target: ModelShape, draft: ModelShape | None, knobs: Knobs, device):
        self.specs = candidate_buffer_specs(target, draft, knobs)
        self.tensors: dict[str, torch.Tensor] = {
            spec.name: torch.zeros(spec.shape, dtype=TORCH_DTYPES[spec.dtype], device=device) for spec in self.specs
        }

    def __getattr__(self, name: str) -> torch.Tensor:
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        raise AttributeError(name)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def allocate_caches(target: ModelShape, draft: ModelShape | None, knobs: Knobs, device,
                    target_layer_devices=None, draft_layer_devices=None):
    """(target cache, draft cache or None, step buffers), exactly as specmemo_plan.memory sizes them.
    `*_layer_devices`: each layer's device in a multi-device plan (else all on `device`)."""
    k = knobs.draft_length
    t_cache = StaticKVCache(
        target, knobs.batch_size, kv_slots(target, knobs.max_context, k), knobs.cache_dtype, device, target_layer_devices
    )
    d_cache = None
    if draft is not None and k > 0:
        d_cache = StaticKVCache(
            draft, knobs.batch_size, kv_slots(draft, knobs.max_context, k), knobs.cache_dtype, device, draft_layer_devices
        )
    return t_cache, d_cache, StepBuffers(target, draft, knobs, device)
