"""One model over its static cache: explicit positions, 4D masks, logits only where they are used.

We run the decoder body (`model.model`) ourselves instead of `model(...)`:
- `position_ids` [B, n] are per row (rows sit at different lengths), so RoPE is right for each row;
- the masks are 4D bool tensors [B, 1, n, R] (transformers' mask functions return a 4D mask as it
  is), one per mask group of the cache (engine/cache.py): full layers see slot s from the query at
  position q iff s <= q; window layers see the position p a slot holds iff q - W < p <= q. A model
  with both kinds (Gemma-3, GPT-OSS, ...) gets them as {layer type: mask}, the mapping its body
  takes in place of one mask. Eager attention (Gemma-2's softcaps, GPT-OSS's sinks) adds its mask
  to the scores: it gets them as 0 / the dtype's lowest;
- the last hidden states go through the output layer only at the positions we need, straight into
  a preallocated buffer, so no [B, n, V] logits tensor exists for a prompt.
"""

from __future__ import annotations

import inspect

import torch

from specmemo_plan.errors import SpecMemoError

from .attention import packed_attention
from .cache import StaticKVCache

NEVER = -(2**62)  # key position of a slot no query may see (never written, or before position 0)


class Decoder:
    def __init__(self, model: torch.nn.Module, cache: StaticKVCache):
        self.model = model
        self.body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        head = model.get_output_embeddings()
        self.head = head.weight  # [V, H]; tied to the embedding when the config says so
        self.cache = cache
        self.device = self.head.device
        # transformers 5.x renamed `past_key_values` to `cache` (the old name goes in 5.40)
        params = inspect.signature(self.body.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._mask_names = _mask_names(self.body, model.config, cache)
        self._adjust = _logit_adjustments(model.config, getattr(head, "bias", None))
        self._additive = _additive_masks(model.config)  # eager attention adds its mask to the scores
        self.transient_masks = 0  # masks this decoder had to allocate (a buffer missing or too small)

    def forward(
        self, input_ids: torch.Tensor, starts: list[int], mask: torch.Tensor, start_tensor: torch.Tensor | None = None,
        window_mask: torch.Tensor | None = None, real: list[int] | None = None,
        positions: torch.Tensor | None = None, tree_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states [B, n, H] of `input_ids` [B, n] placed at positions starts[b] + j.

        `mask` is a bool buffer [B, 1, >= n, >= R] filled in place (R = slots read: the longest row),
        for the full layers (or the window layers of a model that has only those); `window_mask` the
        same for the window layers of a model with both. `start_tensor` is `starts` already on the
        device (the speculative step computes it there). `real[b]`: row b's tokens that are not
        padding (a prefill pads short rows; window layers must not store the padding).

        A token tree (engine/tree.py) still writes token j to slot starts[b] + j, but gives its
        `positions` [B, n] (by depth) and its filled `tree_mask` [B, 1, n, R] explicitly; full-attention
        caches only (a ring's slot is its position)."""
        n = input_ids.shape[1]
        if start_tensor is None:
            start_tensor = torch.tensor(starts, dtype=torch.long, device=self.device)
        if positions is None:
            positions = start_tensor.unsqueeze(1) + torch.arange(n, device=self.device)
        cache = self.cache
        cache.set_write(starts, n, real)
        if tree_mask is not None:
            if not cache.uniform_full:
                from .tree import check_tree_cache

                check_tree_cache(cache)
            attention = tree_mask
        elif cache.uniform_full:  # one full-attention mask: the common path, unchanged
            read = cache.read_length
            attention = mask[: input_ids.shape[0], :, :n, :read]
            torch.le(torch.arange(read, device=self.device), positions[:, None, :, None], out=attention)
        else:
            attention = self._masks(positions, start_tensor, mask, window_mask, real)
        if self._additive:  # 0 where visible, the dtype's lowest where not (transformers' eager masks)
            attention = _additive(attention, self.head.dtype)
        with packed_attention(self.model.config):  # no per-head K/V copies for grouped-query attention
            out = self.body(
                input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                **{self._cache_kwarg: cache},
            )
        return out.last_hidden_state

    def _masks(self, positions, start_tensor, mask, window_mask, real):
        """One mask per group of the cache, in its buffer: full layers by slot, window layers by the
        position each read key holds (ring slot or gathered copy, engine/cache.py)."""
        B, n = positions.shape
        cache, views = self.cache, []
        for g, group in enumerate(cache.groups):
            buffer = mask if g == 0 else window_mask
            if group.window is None:
                view = self._view(buffer, B, n, cache.read_length)
                torch.le(torch.arange(cache.read_length, device=self.device), positions[:, None, :, None], out=view)
                views.append(view)
                continue
            plan, q = cache.windows[g], positions
            if plan.gather:  # key i holds position start - gathered + i
                held = (start_tensor - plan.gathered).unsqueeze(1) + torch.arange(plan.gathered + n, device=self.device)
            else:  # ring slot j holds the position in (top - R, top] congruent to j
                top = start_tensor + (n - 1) if real is None else start_tensor + torch.tensor(real, device=self.device) - 1
                top = top.unsqueeze(1)
                held = top - torch.remainder(top - torch.arange(plan.read, device=self.device), group.slots)
                if real is not None:  # padded queries look where the row's last real token looks
                    q = torch.minimum(positions, top)
            held = held.masked_fill(held < 0, NEVER)[:, None, None, :]
            view = self._view(buffer, B, n, held.shape[-1])
            torch.le(held, q[:, None, :, None], out=view)
            view &= held > (q - group.window)[:, None, :, None]
            views.append(view)
        if self._mask_names is None:
            return views[0]
        return {name: views[g] for name, g in self._mask_names.items()}

    def _view(self, buffer: torch.Tensor | None, B: int, n: int, read: int) -> torch.Tensor:
        if buffer is not None and buffer.shape[0] >= B and buffer.shape[2] >= n and buffer.shape[3] >= read:
            return buffer[:B, :, :n, :read]
        self.transient_masks += 1  # B x n x read bools, no more than the forward's full-layer mask
        return torch.empty((B, 1, n, read), dtype=torch.bool, device=self.device)

    def logits(self, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> out [..., V], written into the caller's buffer."""
        if hidden.dim() == 1:
            torch.mv(self.head, hidden, out=out)
        else:
            torch.matmul(hidden, self.head.t(), out=out)
        for adjust in self._adjust:
            adjust(out)
        return out


def _mask_names(body, config, cache: StaticKVCache) -> dict[str, int] | None:
    """None when one mask serves every layer; else {layer type: mask group} for a body that takes
    a mapping (transformers' `causal_mask_mapping`), refused for one that cannot."""
    if len(cache.groups) == 1:
        return None
    types = getattr(config, "layer_types", None) or []
    try:
        takes_mapping = "causal_mask_mapping" in inspect.getsource(type(body).forward)
    except (OSError, TypeError):
        takes_mapping = False
    names: dict[str, int] = {}
    consistent = len(types) == len(cache.layer_group) and all(
        names.setdefault(name, g) == g for name, g in zip(types, cache.layer_group))
    if not (takes_mapping and consistent):
        raise SpecMemoError(
            f"{config.model_type}: layers with different attention windows, and a decoder that takes one mask for all",
            "the engine runs hybrid-window models whose config lists `layer_types` (Gemma-2/3, GPT-OSS, Qwen3, ...)")
    return names


def _additive_masks(config) -> bool:
    """Whether the model's attention adds its mask to the scores (eager: a float mask) rather than
    taking a bool one (SDPA); other implementations are refused, they take neither."""
    implementation = config._attn_implementation
    if implementation in ("sdpa", "eager"):
        return implementation == "eager"
    raise SpecMemoError(f"{config.model_type}: attention implementation {implementation!r} is not one the engine runs",
                        "load the model with attn_implementation='sdpa' (or 'eager')")


def _additive(masks, dtype):
    """Bool masks -> float masks of `dtype` (a transient of B x n x R elements each, per forward)."""
    if isinstance(masks, dict):
        converted: dict[int, torch.Tensor] = {}
        for m in masks.values():
            if id(m) not in converted:
                converted[id(m)] = _additive(m, dtype)
        return {name: converted[id(m)] for name, m in masks.items()}
    zero, lowest = torch.zeros((), dtype=dtype, device=masks.device), torch.finfo(dtype).min
    return torch.where(masks, zero, torch.full((), lowest, dtype=dtype, device=masks.device))


def _logit_adjustments(config, bias) -> list:
    """What the model's own forward does to the output layer's product, in place on the logits:
    a bias, Granite's `logits_scaling` (divide), Cohere's `logit_scale` (multiply), Gemma-2/3's
    `final_logit_softcapping` (cap * tanh(x / cap)). Greedy argmax is unchanged by all but the bias;
    sampling needs each."""
    ops = []
    if bias is not None:
        ops.append(lambda out: out.add_(bias))
    if getattr(config, "logits_scaling", None):
        ops.append(lambda out, s=config.logits_scaling: out.div_(s))
    if getattr(config, "logit_scale", None) and config.model_type.startswith("cohere"):
        ops.append(lambda out, s=config.logit_scale: out.mul_(s))
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        ops.append(lambda out, c=cap: out.div_(c).tanh_().mul_(c))
    return ops
