"""Preallocated KV caches and step buffers, sized from the plan by specmemo_plan.memory.

One definition: `kv_layer_slots_all` gives each layer's positions per sequence, `candidate_buffer_specs`
the step buffers. This module allocates exactly those tensors, once, before generation, and never
grows them; tests check the bytes against the plan's prediction to the byte.

Each layer keeps K [B, kv_heads, slots, k_dim] and V [B, kv_heads, slots, v_dim] (MLA: the latent
and the rotary key, one "head"). Layers that share slots and window share one attention mask: a
`Group`.
- Full-attention layers: slot == absolute position. A forward writes its tokens at each row's own
  positions, and the query at position q sees slot s iff s <= q. Rejected drafts are not erased:
  their slots lie beyond the row's committed length and are rewritten before any query sees them.
- Window layers (sliding attention, window W, R slots): a ring, slot = position mod R. The query at
  q sees stored position p iff q - W < p <= q. With R = W + k (the plan's slots) a forward of up to
  k + 1 tokens never overwrites a position one of its queries needs, so steps read the ring in
  place ("direct"). A longer forward (a prefill chunk) that wraps reads a gathered copy instead:
  the W - 1 positions before the chunk, then the chunk ("gather": a transient of at most
  min(W - 1, start) + n positions per layer, no more than a full layer reads), and writes the last
  min(n, R) positions into the ring after attention.
  A ring forgets: each row's highest written position is kept (host-side), and a forward that would
  start where the ring no longer holds the window before it is refused (`holds`); a caller reusing
  cached positions asks `reusable_start` first. Padding a prefill adds to short rows must not reach
  the ring (`set_write(real=...)`): it would overwrite the row's own window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specmemo_plan.memory import Knobs, candidate_buffer_specs, kv_layer_slots_all
from specmemo_plan.models import ModelShape

TORCH_DTYPES = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int64": torch.int64, "bool": torch.bool,
}


@dataclass(frozen=True)
class Group:
    """Layers sharing one attention mask: R slots, and W when the window cuts anything in them."""

    slots: int
    window: int | None  # None: full attention, slot == position


class StaticKVCache:
    """K and V of every layer in the plan's KV dtype, grouped by mask (see the module docstring).

    It speaks the part of transformers' Cache protocol that the decoder layers use: `update(k, v,
    layer_idx, ...)` stores the new K/V and returns the keys/values attention reads. Before each
    forward the caller sets where the new tokens go (`set_write`). `slots`: one count for every layer,
    or one per layer."""

    is_compileable = False

    def __init__(self, shape: ModelShape, batch_size: int, slots, dtype: str, device, layer_devices=None):
        self.shape = shape
        self.batch_size = batch_size
        self.dtype = TORCH_DTYPES[dtype]
        specs = shape.cache_layers  # specmemo_plan CacheLayer: kv_heads, k_dim, v_dim, window
        per_layer = [slots] * len(specs) if isinstance(slots, int) else list(slots)
        self.layer_slots = per_layer
        self.slots = max(per_layer)
        groups = [Group(n, _eff(spec.window, n)) for spec, n in zip(specs, per_layer)]
        # full layers' group first (the caller's main mask), then window groups, larger first
        self.groups: list[Group] = sorted(set(groups), key=lambda g: (g.window is not None, -g.slots, g.window or 0))
        self.layer_group = [self.groups.index(g) for g in groups]
        self.uniform_full = len(self.groups) == 1 and self.groups[0].window is None  # today's fast path
        self._ring = [self.groups[g].window is not None for g in self.layer_group]  # per layer
        # one device for all layers, or each layer's own in a multi-device plan (engine/placement.py)
        devices = layer_devices or [device] * len(specs)
        # zeros, not empty: the pages are touched now, so measured process memory sees them at once;
        # and slots never written stay finite (a masked NaN key would still poison SDPA's sum)
        self.keys = [torch.zeros((batch_size, s.kv_heads, n, s.k_dim), dtype=self.dtype, device=d)
                     for s, n, d in zip(specs, per_layer, devices)]
        self.values = [torch.zeros((batch_size, s.kv_heads, n, s.v_dim), dtype=self.dtype, device=d)
                       for s, n, d in zip(specs, per_layer, devices)]
        self._start: int | None = None  # all rows write from the same position: a slice copy
        self._starts: list[int] = []  # each row's first position (rows at different lengths)
        self._read = self.slots  # full layers: slots attention reads, 0 .. longest live row
        self._batch = batch_size
        self._top = [-1] * batch_size  # per row: highest position written since it last started at 0
        self.windows: list[WindowPlan | None] = [None] * len(self.groups)  # this forward's, per group

    def tensors(self) -> list[torch.Tensor]:
        return self.keys + self.values

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def set_write(self, starts: list[int], num_tokens: int, real: list[int] | None = None) -> None:
        """The next forward writes `num_tokens` tokens per row at positions starts[b] .. starts[b]+n-1
        (`starts` on the host: they decide slicing without a sync). `real[b]`: how many of row b's
        tokens are real (a prefill pads short rows); window layers store only those."""
        self._batch = len(starts)  # rows in use: the first rows of the preallocated batch
        # all rows at one position: one slice copy; else a slice copy per row (host-side starts,
        # no sync; index_put_ over [B, n] positions was the slower path on CPU)
        self._start = starts[0] if len(set(starts)) == 1 else None
        self._starts = starts
        self._read = max(starts) + num_tokens
        if self.uniform_full:
            if self._read > self.slots:
                raise RuntimeError(f"write up to position {self._read} beyond the {self.slots} preallocated slots")
            return
        real = real if real is not None else [num_tokens] * len(starts)
        for g, group in enumerate(self.groups):
            if group.window is None:
                if self._read > group.slots:
                    raise RuntimeError(f"write up to position {self._read} beyond the {group.slots} preallocated slots")
                continue
            for row, start in enumerate(starts):
                if start and not self.holds(row, start, group):
                    raise RuntimeError(f"row {row}: the {group.window}-token window before position {start} "
                                       "was overwritten in the ring; prefill it from position 0")
            self.windows[g] = WindowPlan.make(group, starts, num_tokens, real)
        for row, (start, r) in enumerate(zip(starts, real)):
            self._top[row] = max(self._top[row] if start else -1, start + r - 1)

    def holds(self, row: int, start: int, group: Group | None = None) -> bool:
        """Whether a forward of `row` may start at `start`: every window group still holds the
        positions start - W + 1 .. start - 1 (none overwritten by a later position in its ring)."""
        groups = [group] if group else [g for g in self.groups if g.window is not None]
        return all(self._top[row] < max(0, start - g.window + 1) + g.slots for g in groups)

    def reusable_start(self, row: int, start: int) -> int:
        """`start` if row's cached positions before it can be reused, else 0 (prefill from scratch).
        Checked from start - 1: the draft's first forward after a prefill may begin one earlier."""
        return start if self.holds(row, max(0, start - 1)) else 0

    @property
    def read_length(self) -> int:
        return self._read

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self._ring[layer_idx]:
            return self._update_window(key_states, value_states, layer_idx)
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

    def _update_window(self, key_states, value_states, layer_idx: int):
        plan = self.windows[self.layer_group[layer_idx]]
        keys, values = self.keys[layer_idx][: self._batch], self.values[layer_idx][: self._batch]
        out = None
        if plan.gather:  # read the window before the chunk first: the writes below may overwrite it
            out = []
            for ring, new in ((keys, key_states), (values, value_states)):
                t = new.new_empty((*new.shape[:2], plan.gathered + new.shape[2], new.shape[3]))
                for rows, src, dst, count in plan.reads:
                    t[rows, :, dst : dst + count].copy_(ring[rows, :, src : src + count])
                t[:, :, plan.gathered :].copy_(new)
                out.append(t)
        for rows, src, dst, count in plan.writes:
            keys[rows, :, dst : dst + count].copy_(key_states[rows, :, src : src + count])
            values[rows, :, dst : dst + count].copy_(value_states[rows, :, src : src + count])
        if out is not None:
            return out[0], out[1]
        k, v = keys[:, :, : plan.read], values[:, :, : plan.read]
        if k.dtype != key_states.dtype:
            k, v = k.to(key_states.dtype), v.to(value_states.dtype)
        return k, v

    def move(self, rows: list[int], src: list[list[int]], dst: list[list[int]]) -> None:
        """K/V of slots src[i][j] copied to dst[i][j] of row rows[i], in every layer: a token tree's
        accepted path to the row's contiguous positions (engine/tree.py). Full-attention layers only
        (slot == position); all sources are read before any destination is written."""
        if any(self._ring):
            raise RuntimeError("moving K/V between slots of a ring (window) layer is not supported")
        pairs = [(r, s, d) for r, ss, dd in zip(rows, src, dst) for s, d in zip(ss, dd) if s != d]
        if not pairs:
            return
        index = torch.tensor(pairs, dtype=torch.long).t()  # [3, P]: row, source slot, destination slot
        on: dict = {}  # the index on each layer's device (a multi-device plan)
        for keys, values in zip(self.keys, self.values):
            r, s, d = on.setdefault(keys.device, index.to(keys.device))
            keys[r, :, d] = keys[r, :, s]  # advanced indexing reads a copy first: overlaps are safe
            values[r, :, d] = values[r, :, s]

    # transformers calls these only when position_ids or a 2D mask are missing; we pass both.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._read

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.slots


def _eff(window: int | None, slots: int) -> int | None:
    """The window as the mask needs it: None when it cannot cut anything in `slots` positions
    (more than the window: they hold the whole context). Equal: a ring of W (k = 0) or a context
    that fills the slots exactly; the ring's mask is right for both."""
    return window if window is not None and window <= slots else None


@dataclass(frozen=True)
class WindowPlan:
    """One forward over one window group: which slots it reads and writes (host-side, once per
    forward, shared by the group's layers). Copies are (rows, source, destination, count): rows a
    slice (all rows at one start) or a row index."""

    gather: bool  # the forward reads a gathered copy (positions start - gathered .. start + n - 1)
    read: int  # direct: ring slots attention reads; gather: unused
    gathered: int  # gather: positions copied from before the chunk
    reads: tuple  # gather: ring -> copy
    writes: tuple  # new tokens -> ring

    @staticmethod
    def make(group: Group, starts: list[int], n: int, real: list[int]) -> "WindowPlan":
        R, W = group.slots, group.window
        top = max(starts) + n
        # direct iff nothing this forward writes is a position one of its queries still needs
        gather = top > R and n > R - W + 1
        gathered = min(W - 1, max(starts)) if gather else 0
        same = len(set(starts)) == 1 and len(set(real)) == 1
        rows = [slice(None)] if same else list(range(len(starts)))
        reads, writes = [], []
        for row in rows:
            b = 0 if same else row
            s, r = starts[b], real[b]
            if gather:  # positions s - gathered .. s - 1 (below 0: finite leftovers, masked)
                reads += [(row, src, dst, c) for src, dst, c in _ring_slots(s - gathered, gathered, R)]
            w = min(r, R)  # of a chunk longer than the ring only its last R positions survive
            writes += [(row, r - w + off, slot, c) for slot, off, c in _ring_slots(s + r - w, w, R)]
        return WindowPlan(gather, min(R, top), gathered, tuple(reads), tuple(writes))


def _ring_slots(first: int, count: int, R: int) -> list[tuple[int, int, int]]:
    """(slot, offset in the span, count) pieces of positions first .. first+count-1 in a ring of R."""
    slot = first % R
    head = min(count, R - slot)
    pieces = [(slot, 0, head)] if head else []
    if count > head:
        pieces.append((0, head, count - head))
    return pieces


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
    t_cache = StaticKVCache(target, knobs.batch_size, kv_layer_slots_all(target, knobs.max_context, k),
                            knobs.cache_dtype, device, target_layer_devices)
    d_cache = None
    if draft is not None and k > 0:
        d_cache = StaticKVCache(draft, knobs.batch_size, kv_layer_slots_all(draft, knobs.max_context, k),
                                knobs.cache_dtype, device, draft_layer_devices)
    return t_cache, d_cache, StepBuffers(target, draft, knobs, device)
