"""The plan over N devices: what each device holds, where the draft goes, what accelerate is handed.

One device is the N = 1 case: it holds everything, and its share is `memory.breakdown` itself. With
N > 1 the target is split layer-wise, pipeline style, by the same sequential walk accelerate does
(`accelerate.py`), but over what each device really holds (docs/placement.md): each decoder layer
carries its KV slice; the embedding's device the input buffers; the output layer's device the verify
logits and the whole draft (the accept step reads both models' logits there); every used device its
own runtime overhead and activation peak (n-gram's candidate tokens, no draft to ride with, sit with the
verify logits). So
    sum over devices = memory.breakdown(...) + (used - 1) * (runtime overhead + target activation peak)
exactly. Policies: "sequential" fills device 0 first; "balanced" (default) finds the smallest common
cap per device under which the walk still places everything, so the layers spread over all devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import SpecMemoError
from ..activations import activation_bytes, target_activation_bytes
from ..memory import (
    COMPONENTS,
    Knobs,
    MemoryBreakdown,
    breakdown,
    candidate_buffer_specs,
    kv_cache_bytes,
    kv_layer_bytes,
    weight_bytes,
)
from ..models import ModelShape
from ..units import format_bytes
from .accelerate import accelerate_device_map, clean_device_map, resolve
from .layout import Layout, layout

POLICIES = ("balanced", "sequential")
DEFAULT_POLICY = "balanced"
HOLDS = ("embedding", "lm_head", "draft")


@dataclass(frozen=True)
class DeviceShare:
    """What one device holds: the plan's `per_device[i]`."""

    index: int
    budget_bytes: int
    memory: MemoryBreakdown  # the components of memory.breakdown, for this device
    layers: tuple[int, int] | None  # first and last decoder layer held (inclusive); None: none
    modules: tuple[str, ...]  # target modules held, accelerate names ("" = the whole model)
    holds_embedding: bool
    holds_lm_head: bool  # the verify logits come out here
    holds_draft: bool
    accelerate_weight_bytes: int  # target weights as accelerate counts them (with buffers)
    target_params: int  # target parameters held: what a forward over this device reads

    @property
    def used(self) -> bool:
        return bool(self.modules) or self.holds_draft

    @property
    def num_layers(self) -> int:
        return 0 if self.layers is None else self.layers[1] - self.layers[0] + 1

    @property
    def holds(self) -> list[str]:
        flags = (self.holds_embedding, self.holds_lm_head, self.holds_draft)
        return [name for name, flag in zip(HOLDS, flags) if flag]

    @property
    def headroom_bytes(self) -> int:
        return self.budget_bytes - self.memory.total_bytes

    def as_dict(self) -> dict:
        return {
            "index": self.index, "budget_bytes": self.budget_bytes, "total_bytes": self.memory.total_bytes,
            "headroom_bytes": self.headroom_bytes, "components": dict(self.memory.components),
            "layers": list(self.layers) if self.layers else None, "num_layers": self.num_layers,
            "holds": self.holds, "modules": list(self.modules),
            "accelerate_weight_bytes": self.accelerate_weight_bytes, "target_params": self.target_params,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "DeviceShare":
        holds = set(data["holds"])
        return cls(
            index=data["index"], budget_bytes=data["budget_bytes"], memory=MemoryBreakdown(dict(data["components"])),
            layers=tuple(data["layers"]) if data["layers"] else None, modules=tuple(data["modules"]),
            holds_embedding="embedding" in holds, holds_lm_head="lm_head" in holds, holds_draft="draft" in holds,
            accelerate_weight_bytes=data["accelerate_weight_bytes"], target_params=data["target_params"],
        )


@dataclass(frozen=True)
class Placement:
    """How the devices connect: the plan's `placement`, what the engine hands accelerate."""

    policy: str
    draft_device: int | None  # None without a draft
    head_device: int  # where the verify logits come out
    hops: int  # device changes along one target forward (a tied lm_head adds the way back)
    device_map: dict  # target module -> device index, cleaned as accelerate cleans it
    max_memory: dict | None  # {device: bytes} under which infer_auto_device_map re-derives device_map
    duplicates: dict  # per-device duplicates beyond the one-device total: component -> bytes

    @property
    def draft_device_map(self) -> dict | None:
        return None if self.draft_device is None else {"": self.draft_device}

    def as_dict(self) -> dict:
        return {
            "policy": self.policy, "draft_device": self.draft_device, "head_device": self.head_device,
            "hops": self.hops, "device_map": dict(self.device_map), "draft_device_map": self.draft_device_map,
            "max_memory": None if self.max_memory is None else {str(k): v for k, v in self.max_memory.items()},
            "duplicates": dict(self.duplicates),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Placement":
        max_memory = data.get("max_memory")
        return cls(
            policy=data["policy"], draft_device=data.get("draft_device"), head_device=data["head_device"],
            hops=data["hops"], device_map=dict(data["device_map"]),
            max_memory=None if max_memory is None else {int(k): v for k, v in max_memory.items()},
            duplicates=dict(data["duplicates"]),
        )


@dataclass(frozen=True)
class DeviceSplit:
    devices: tuple[DeviceShare, ...]
    placement: Placement

    @property
    def used_devices(self) -> int:
        return sum(1 for d in self.devices if d.used)

    @property
    def total(self) -> MemoryBreakdown:
        return MemoryBreakdown({c: sum(d.memory.components[c] for d in self.devices) for c in COMPONENTS})

    @property
    def fits(self) -> bool:
        return all(d.memory.total_bytes <= d.budget_bytes for d in self.devices)

    def as_dict(self) -> dict:
        return {**self.placement.as_dict(), "num_devices": len(self.devices), "used_devices": self.used_devices,
                "total": self.total.as_dict(), "devices": [d.as_dict() for d in self.devices]}


# ----------------------------------------------------------------------------- costs and the walk


@dataclass(frozen=True)
class _Costs:
    units: list  # bytes each placement unit makes its device hold
    kv_layers: tuple[int, ...]  # each decoder layer's KV (window layers hold fewer slots)
    input_buffers: int  # verify mask and lengths: on the embedding's device
    logits: int  # the verify logits and the candidates they are checked against: on the output layer's device
    draft_buffers: int
    act_target: int  # peak transient of a target forward on any device
    act_all: int  # the same, with the draft's forwards: on the draft's device


def _costs(target, draft, knobs, lay: Layout) -> _Costs:
    """Plan-space cost of each unit (what its device must hold for it); the draft rides with the output layer."""
    B, k = knobs.batch_size, knobs.draft_length
    kv_layers = kv_layer_bytes(target, B, knobs.max_context, k, knobs.cache_dtype)
    specs = {s.name: s.nbytes for s in candidate_buffer_specs(target, draft, knobs)}
    inputs = ("verify_mask", "verify_mask_sliding", "lengths")
    input_buffers = sum(specs.get(name, 0) for name in inputs)
    draft_buffers = sum(v for name, v in specs.items() if name.startswith("draft_"))
    # the rest where the accept step runs: target_logits, and n-gram's candidate_tokens / candidate_parents
    head_buffers = sum(v for name, v in specs.items() if name not in inputs and not name.startswith("draft_"))
    act_target, act_all = target_activation_bytes(target, knobs), activation_bytes(target, draft, knobs)
    draft_pack = 0
    if draft is not None:
        draft_kv = kv_cache_bytes(draft, B, knobs.max_context, k, knobs.cache_dtype)
        draft_pack = weight_bytes(draft, knobs.draft_dtype) + draft_kv + draft_buffers + (act_all - act_target)
    head_extra = head_buffers + draft_pack
    units = []
    for u in lay.units:
        cost = u.weight_bytes + (kv_layers[u.layer] if u.kind == "layer" else 0)
        if u.name == lay.embed_name:
            cost += input_buffers + (head_extra if lay.tied else 0)
        if u.kind == "head" and not lay.tied:
            cost += head_extra
        units.append(cost)
    return _Costs(units, kv_layers, input_buffers, head_buffers, draft_buffers, act_target, act_all)


def _walk(costs, limits) -> list[int] | None:
    """Sequential placement: each unit on the current device while it fits, else the next one (never back).
    None when the units run out of devices."""
    used, where, d = [0] * len(limits), [], 0
    for cost in costs:
        while d < len(limits) and used[d] + cost > limits[d]:
            d += 1
        if d == len(limits):
            return None
        used[d] += cost
        where.append(d)
    return where


def _smallest_cap(costs, limits) -> int:
    """The smallest common cap per device under which the walk still places every unit."""
    low, high = 0, max(limits)
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if _walk(costs, [min(lim, mid) for lim in limits]) is None else (low, mid)
    return low


def _balanced_walk(costs, limits) -> list[int]:
    """Device by device: fill the current device up to the smallest cap that still places the rest, then
    balance what remains over the devices left. Spreads the units over every device when there are enough."""
    where, start = [], 0
    for d in range(len(limits)):
        rest, rest_limits = costs[start:], limits[d:]
        if not rest:
            break
        cap = _smallest_cap(rest, rest_limits)
        take = sum(1 for x in _walk(rest, [min(lim, cap) for lim in rest_limits]) if x == 0)
        where += [d] * take
        start += take
    return where


def _check(knobs, draft, budgets, policy) -> list[int]:
    knobs.validate(has_draft=draft is not None)
    if policy not in POLICIES:
        raise SpecMemoError(f"unknown split policy {policy!r}", "choose one of: " + ", ".join(POLICIES))
    budgets = [int(b) for b in budgets]
    if not budgets or any(b <= 0 for b in budgets):
        raise SpecMemoError("every device needs a positive budget", "give --devices N with N >= 1")
    return budgets


# ----------------------------------------------------------------------------- the split


def split_layers(target: ModelShape, draft: ModelShape | None, knobs: Knobs, budgets_per_device: Sequence[int],
                 overhead: int = 0, policy: str = DEFAULT_POLICY) -> DeviceSplit:
    """Place the plan on devices with these budgets. One device holds everything (its share may exceed
    its budget: `DeviceSplit.fits` says); over N > 1 devices the target's layers are walked onto them,
    and a plan the walk cannot place raises, saying what did not fit. `overhead`: one device's runtime
    overhead (its hardware profile's runtime_overhead_bytes)."""
    budgets = _check(knobs, draft, budgets_per_device, policy)
    if len(budgets) == 1:
        return _one_device(target, draft, knobs, budgets[0], overhead, policy)
    lay = layout(target, knobs.weight_dtype)
    costs = _costs(target, draft, knobs, lay)
    fixed = overhead + costs.act_target
    limits = [max(0, b - fixed) for b in budgets]
    placed = costs.units[:-1] if lay.tied else costs.units  # a tied lm_head (0 bytes) goes with the embedding
    where = _walk(placed, limits)
    if where is None:
        single = breakdown(target, draft, knobs, overhead).total_bytes
        raise SpecMemoError(
            f"the plan does not fit {len(budgets)} device(s) of {format_bytes(max(budgets))}: it needs "
            f"{format_bytes(single)} on one device, plus {format_bytes(fixed)} of runtime overhead and activations "
            "on each further device, in whole decoder layers",
            "add --devices, raise --budget, or lower --batch, --context or --draft-length",
        )
    if policy == "balanced":
        where = _balanced_walk(placed, limits)
    if lay.tied:
        where = where + [where[0]]
    return _build(target, draft, knobs, budgets, overhead, policy, lay, where, costs)


def _one_device(target, draft, knobs, budget, overhead, policy) -> DeviceSplit:
    memory = breakdown(target, draft, knobs, overhead)
    share = DeviceShare(
        index=0, budget_bytes=budget, memory=memory, layers=(0, target.num_layers - 1), modules=("",),
        holds_embedding=True, holds_lm_head=True, holds_draft=draft is not None,
        accelerate_weight_bytes=memory.components["target_weights"], target_params=target.num_params,
    )
    placement = Placement(policy, 0 if draft is not None else None, 0, 0, {"": 0}, None,
                          {"runtime_overhead": 0, "activations": 0})
    return DeviceSplit((share,), placement)


def _build(target, draft, knobs, budgets, overhead, policy, lay, where, costs: _Costs) -> DeviceSplit:
    units = lay.units
    head_device = where[-1]
    embed_device = where[[u.name for u in units].index(lay.embed_name)]
    draft_device = head_device if draft is not None else None
    draft_kv = kv_cache_bytes(draft, knobs.batch_size, knobs.max_context, knobs.draft_length, knobs.cache_dtype)
    devices = []
    for i, budget in enumerate(budgets):
        held = [u for u, d in zip(units, where) if d == i]
        layer_ids = [u.layer for u in held if u.kind == "layer"]
        holds_draft = draft_device == i
        used = bool(held) or holds_draft
        buffers = (costs.input_buffers if i == embed_device else 0) + (costs.logits if i == head_device else 0)
        components = {
            "target_weights": sum(u.weight_bytes for u in held),
            "draft_weights": weight_bytes(draft, knobs.draft_dtype) if holds_draft else 0,
            "target_kv": sum(costs.kv_layers[j] for j in layer_ids),
            "draft_kv": draft_kv if holds_draft else 0,
            "candidate_buffers": buffers + (costs.draft_buffers if holds_draft else 0),
            # one forward at a time: the draft's device also runs the draft (activation_bytes over both)
            "activations": (costs.act_all if holds_draft else costs.act_target) if used else 0,
            "runtime_overhead": overhead if used else 0,
        }
        devices.append(DeviceShare(
            index=i, budget_bytes=budget, memory=MemoryBreakdown(components),
            layers=(min(layer_ids), max(layer_ids)) if layer_ids else None, modules=tuple(u.name for u in held),
            holds_embedding=i == embed_device, holds_lm_head=i == head_device, holds_draft=holds_draft,
            accelerate_weight_bytes=sum(u.accelerate_bytes for u in held), target_params=sum(u.params for u in held),
        ))
    used_count = sum(1 for d in devices if d.used)
    duplicates = {"runtime_overhead": (used_count - 1) * overhead, "activations": (used_count - 1) * costs.act_target}
    path = [d for u, d in zip(units, where) if not (lay.tied and u.kind == "head")]
    hops = sum(1 for a, b in zip(path, path[1:]) if a != b) + (1 if lay.tied and path[-1] != head_device else 0)
    device_map = clean_device_map({u.name: d for u, d in zip(units, where)})
    max_memory = _max_memory_for(target, knobs.weight_dtype, devices, device_map)
    placement = Placement(policy, draft_device, head_device, hops, device_map, max_memory, duplicates)
    return DeviceSplit(tuple(devices), placement)


def _max_memory_for(target, dtype, devices, device_map) -> dict | None:
    """Per-device limits under which accelerate's own walk re-derives `device_map`: each device's weights as
    accelerate counts them, device 0 raised by the reservation accelerate keeps there (found by replaying
    accelerate over the candidate reservations). None if no such limits exist."""
    base = [d.accelerate_weight_bytes for d in devices]
    units = layout(target, dtype).units
    candidates = sorted({0} | {u.accelerate_bytes for u in units} | {sum(u.accelerate_bytes for u in units[:-1])})
    want = {u.name: resolve(device_map, u.name) for u in units}
    for reserve in candidates:
        limits = [base[0] + reserve] + base[1:]
        got = accelerate_device_map(target, dtype, limits)
        if got is not None and all(resolve(got, name) == dev for name, dev in want.items()):
            return {i: v for i, v in enumerate(limits)}
    return None


def fits(target, draft, knobs, budgets_per_device: Sequence[int], overhead: int = 0) -> bool:
    """Does the plan fit these devices? (The same for both policies.)"""
    try:
        return split_layers(target, draft, knobs, budgets_per_device, overhead, "sequential").fits
    except SpecMemoError:
        return False


def engine_device_maps(placement: Placement, has_draft: bool) -> tuple[dict, dict | None, dict | None]:
    """(target device_map, draft device_map, max_memory) for the engine: the plan's placement as accelerate takes it."""
    draft_map = ({"": placement.draft_device if placement.draft_device is not None else 0} if has_draft else None)
    return dict(placement.device_map), draft_map, placement.max_memory
