"""Per-device plans: the target split layer-wise over N devices, pipeline style, as accelerate places it.

A forward visits the devices one after another (no pipelining overlap): embedding on the device of
the first decoder layer, each decoder layer whole on one device, in order; the final norm and the
output layer after the last layer. This is what `accelerate.infer_auto_device_map` does with
`no_split_module_classes=[<decoder layer class>]` (read from accelerate 1.15, `utils/modeling.py`):

- it walks the model's children in order and puts each on the current device while it fits, splits a
  module that does not fit into its children unless its class is in `no_split_module_classes`, and
  otherwise moves on to the next device (never back);
- on the *first* GPU only (`main_devices = [gpus[0], "cpu"]`) it keeps room for the largest layer
  still to be placed (`get_max_layer_size`), in case that layer has to be offloaded and brought back;
  the other GPUs are filled to their limit;
- tied weights (`tie_word_embeddings`): the output layer shares the embedding matrix; accelerate counts
  `lm_head` as 0 bytes and puts it on the embedding's device, so the logits come out on the *first*
  device, and the hidden state travels back from the last device;
- module sizes come from `compute_module_sizes`: parameters and buffers, floating point ones in the
  requested dtype (at most their own size); the rotary `inv_freq`/`original_inv_freq` float32 buffers
  and Gemma's `embed_scale` count too.

`accelerate_device_map` replays that algorithm on the module tree of a `ModelShape` (pure Python, no torch);
tests check it against the real `infer_auto_device_map` on meta-device models for many limits.

Our own placement (`split_layers`) is the same sequential walk, but over what each device really holds,
not weights alone: each decoder layer carries its KV slice (kv_cache_bytes / num_layers); the device of
the embedding holds the input buffers (verify mask, lengths); the device of the output layer holds the
verify logits [B, k+1, V] and the draft; every used device holds its own runtime overhead (CUDA/HIP
context: one per device) and the peak transient of a forward over its layers (the same
`memory.forward_activation_bytes`, since one decoder layer runs at a time). No room is kept for
offloading (we never offload), so the split uses the whole budget; the `max_memory` it hands to
accelerate adds accelerate's first-GPU reservation back so that accelerate re-derives the same map.

Where the draft goes: on the device of the output layer, next to the target's logits. The acceptance
test reads the target's [B, k+1, V] and the draft's [B, k, V] logits together, so this keeps both off
the interconnect (only k+1 token ids per sequence travel to the first device for the verify pass), and
in a sequential fill the last device holds the remainder, so it is where room is.

Policies: "sequential" fills device 0 first, as `device_map="sequential"`; "balanced" (default) finds
the smallest common cap per device under which the same walk still places everything, so the layers
spread over all N devices (what `device_map="auto"`/"balanced" aims at): device by device, each takes
layers up to the smallest cap that still lets the rest fit the devices left. Both fit exactly the same
plans; balanced leaves headroom on every device instead of an idle one.

Per-device duplicates (what N devices hold beyond the one-device total): each used device holds its
own runtime overhead and its own activation peak. So
    sum over devices = memory.breakdown(...) + (used - 1) * (runtime overhead + target activation peak)
exactly; weights, KV and candidate buffers are not duplicated. With N = 1 the split is
`memory.breakdown` itself.

Pure Python: no torch at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from .errors import SpecMemoError
from .memory import (
    COMPONENTS,
    FLOAT_DTYPES,
    Knobs,
    MemoryBreakdown,
    activation_bytes,
    breakdown,
    candidate_buffer_specs,
    compute_dtype,
    dtype_bytes,
    forward_activation_bytes,
    kv_cache_bytes,
    kv_slots,
    weight_bytes,
)
from .models import LLAMA_LIKE, ModelShape
from .throughput import DEFAULT_ACCEPTANCE, SpeedPrediction, expected_tokens_from_histogram, expected_tokens_per_step
from .throughput import acceptance_from_histogram, mean_context
from .units import format_bytes

POLICIES = ("balanced", "sequential")
DEFAULT_POLICY = "balanced"

# transformers' decoder layer class per model_type: what accelerate must not split.
NO_SPLIT_CLASSES = {
    "llama": "LlamaDecoderLayer",
    "mistral": "MistralDecoderLayer",
    "qwen2": "Qwen2DecoderLayer",
    "gemma": "GemmaDecoderLayer",
    "gpt2": "GPT2Block",
    "gpt_neox": "GPTNeoXLayer",
}
# GPT-NeoX rotates only part of each head (transformers' GPTNeoXConfig default rotary_pct = 0.25, which
# Pythia uses); ModelShape does not carry it, so the size of its inv_freq buffers assumes it.
NEOX_ROTARY_PCT = 0.25


# ----------------------------------------------------------------------------- module layout


@dataclass(frozen=True)
class Unit:
    """One module accelerate places as a whole (a leaf or a decoder layer), in forward order."""

    name: str  # module name as transformers builds it ("model.layers.3")
    kind: str  # embed | layer | norm | buffers | head
    layer: int | None  # decoder layer index
    params: int  # parameters (a tied lm_head: 0, the embedding holds them)
    weight_bytes: int  # parameter bytes by our memory model (sums to memory.weight_bytes)
    accelerate_bytes: int  # bytes accelerate's compute_module_sizes counts (adds buffers)


@dataclass(frozen=True)
class Layout:
    """A model's placement units and the module tree accelerate walks."""

    units: tuple[Unit, ...]
    base: str  # "model", "transformer", "gpt_neox"
    layers_name: str  # "model.layers", "transformer.h", "gpt_neox.layers"
    tied: bool  # lm_head shares the embedding matrix
    embed_name: str  # the module whose weight lm_head is tied to

    @property
    def head(self) -> Unit:
        return self.units[-1]


def _layer_params(model: ModelShape, non_layer_params: int) -> int:
    body = model.num_params - non_layer_params
    if body % model.num_layers:
        raise SpecMemoError(f"{model.name}: parameter count does not divide into {model.num_layers} equal layers")
    return body // model.num_layers


def layout(model: ModelShape, dtype: str) -> Layout:
    """Placement units of `model` with weights stored in `dtype`, names and order as transformers builds them.

    Parameter counts follow models.count_parameters; quantised formats quantise only the decoder layers'
    matrices (memory.weight_bytes), so the per-layer bytes are the remainder after the 16-bit parts.
    """
    V, H, L = model.vocab_size, model.hidden_size, model.num_layers
    float_weights = dtype in FLOAT_DTYPES
    b = dtype_bytes(dtype) if float_weights else dtype_bytes("fp16")  # bytes of the non-quantised parts
    acc_b = dtype_bytes(compute_dtype(dtype))  # accelerate's dtype for the buffers
    tied = model.tie_word_embeddings
    head_params = 0 if tied else V * H
    if model.model_type in LLAMA_LIKE:
        base, layers_name, embed = "model", "model.layers", "model.embed_tokens"
        rotary = 2 * (model.head_dim // 2)  # inv_freq and original_inv_freq, float32
        pre = [(embed, "embed", V * H, V * H * b + (acc_b if model.model_type == "gemma" else 0))]
        post = [("model.norm", "norm", H), ("model.rotary_emb", "buffers", 0)]
        rotary_bytes = rotary * min(acc_b, 4)
    elif model.model_type == "gpt2":
        base, layers_name, embed = "transformer", "transformer.h", "transformer.wte"
        P = model.max_position_embeddings
        pre = [(embed, "embed", V * H, V * H * b), ("transformer.wpe", "embed", P * H, P * H * b),
               ("transformer.drop", "embed", 0, 0)]
        post = [("transformer.ln_f", "norm", 2 * H)]
        rotary_bytes = 0
    elif model.model_type == "gpt_neox":
        base, layers_name, embed = "gpt_neox", "gpt_neox.layers", "gpt_neox.embed_in"
        pre = [(embed, "embed", V * H, V * H * b), ("gpt_neox.emb_dropout", "embed", 0, 0)]
        post = [("gpt_neox.final_layer_norm", "norm", 2 * H), ("gpt_neox.rotary_emb", "buffers", 0)]
        rotary_bytes = 2 * (int(model.head_dim * NEOX_ROTARY_PCT) // 2) * min(acc_b, 4)
    else:  # models.SUPPORTED_MODEL_TYPES keeps this unreachable
        raise SpecMemoError(f"{model.name}: model_type {model.model_type!r} cannot be split")
    non_layer = sum(p for _, _, p, _ in pre) + sum(p for _, _, p in post) + head_params
    per_layer_params = _layer_params(model, non_layer)
    non_layer_bytes = non_layer * b
    layer_total = weight_bytes(model, dtype) - non_layer_bytes
    if layer_total % L:
        raise SpecMemoError(f"{model.name}: {dtype} weights do not divide into {L} equal layers")
    layer_bytes = layer_total // L
    layer_acc = per_layer_params * b if float_weights else layer_bytes
    units = [Unit(name, kind, None, p, p * b, acc) for name, kind, p, acc in pre]
    units += [Unit(f"{layers_name}.{i}", "layer", i, per_layer_params, layer_bytes, layer_acc) for i in range(L)]
    for name, kind, p in post:
        acc = p * b + (rotary_bytes if kind == "buffers" else 0)
        units.append(Unit(name, kind, None, p, p * b, acc))
    units.append(Unit("lm_head", "head", None, head_params, head_params * b, head_params * b))
    assert sum(u.weight_bytes for u in units) == weight_bytes(model, dtype)
    return Layout(tuple(units), base, layers_name, tied, embed)


# ----------------------------------------------------------------------------- accelerate, replayed


@dataclass
class _Node:
    name: str
    size: int
    children: list = field(default_factory=list)  # empty: a leaf or a no-split module


def _tree(lay: Layout) -> list[_Node]:
    """The model's top-level children as accelerate sees them: [base model, lm_head]."""
    base_children, layers = [], _Node(lay.layers_name, 0)
    for u in lay.units[:-1]:
        if u.kind == "layer":
            if not layers.children:
                base_children.append(layers)
            layers.children.append(_Node(u.name, u.accelerate_bytes))
        else:
            base_children.append(_Node(u.name, u.accelerate_bytes))
    layers.size = sum(c.size for c in layers.children)
    base = _Node(lay.base, sum(c.size for c in base_children), base_children)
    return [base, _Node("lm_head", lay.head.accelerate_bytes)]


def _max_layer(nodes) -> tuple[int, list[str]]:
    """accelerate.utils.modeling.get_max_layer_size: largest leaf or no-split module, and its names."""
    best, names, todo = 0, [], list(nodes)
    while todo:
        node = todo.pop(0)
        if not node.children:
            if node.size > best:
                best, names = node.size, [node.name]
            elif node.size == best:
                names.append(node.name)
        else:
            todo = list(node.children) + todo
    return best, names


def accelerate_device_map(
    model: ModelShape, dtype: str, max_memory: Sequence[int], clean: bool = True
) -> dict[str, int | str] | None:
    """What `infer_auto_device_map(model, max_memory={0: m0, 1: m1, ...}, no_split_module_classes=[layer],
    dtype=dtype)` returns for a model built on the meta device (and `tie_weights()`-ed), replayed from
    accelerate 1.15's algorithm: sequential, the first GPU keeping room for the largest remaining layer,
    tied lm_head with the embedding. Devices are GPU indices only (no "cpu" in max_memory). Modules that fit
    none of the devices go to "disk", as accelerate does."""
    lay = layout(model, dtype)
    queue = _tree(lay)
    n = len(max_memory)
    used = [0] * n
    device_map: dict[str, int | str] = {}
    current = 0
    max_size, max_names = _max_layer(queue)
    while queue:
        node = queue.pop(0)
        max_names = [x for x in max_names if x != node.name and not x.startswith(node.name + ".")]
        if not max_names:
            max_size, max_names = _max_layer(queue)
        if current >= n:  # accelerate's last device is "disk", unlimited
            device_map[node.name] = "disk"
            continue
        limit, reserved = max_memory[current], 0
        if current == 0:  # main_devices = [gpus[0], "cpu"]
            limit, reserved = limit - max_size, max_size
        # Tied weights: a module holding the embedding takes the tied lm_head (0 bytes) along.
        takes_head = lay.tied and (node.name == lay.embed_name or lay.embed_name.startswith(node.name + "."))
        if used[current] + node.size <= limit:
            used[current] += node.size
            device_map[node.name] = current
            if takes_head:
                queue = [q for q in queue if q.name != "lm_head"]
                device_map["lm_head"] = current
            continue
        if node.children:  # split it and look again
            queue = list(node.children) + queue
            max_size, max_names = _max_layer(queue)
            continue
        used[current] += reserved
        current += 1
        queue.insert(0, node)
    return clean_device_map(device_map) if clean else device_map


def clean_device_map(device_map: dict, module_name: str = "") -> dict:
    """accelerate.utils.modeling.clean_device_map: merge the children of a module that all share one device."""
    prefix = "" if module_name == "" else f"{module_name}."
    values = [v for k, v in device_map.items() if k.startswith(prefix)]
    if len(set(values)) == 1 and len(values) > 1:
        for k in [k for k in device_map if k.startswith(prefix)]:
            del device_map[k]
        device_map[module_name] = values[0]
    children = [k for k in device_map if k.startswith(prefix) and len(k) > len(module_name)]
    idx = len(module_name.split(".")) + 1 if module_name else 1
    for child in {".".join(k.split(".")[:idx]) for k in children}:
        clean_device_map(device_map, module_name=child)
    return device_map


def resolve(device_map: dict, module: str):
    """The device a module lands on under a (cleaned) device map: its longest matching prefix."""
    best, device = -1, None
    for key, value in device_map.items():
        if key == "" or module == key or module.startswith(key + "."):
            if len(key) > best:
                best, device = len(key), value
    return device


# ----------------------------------------------------------------------------- the plan split


@dataclass(frozen=True)
class DeviceShare:
    """What one device holds."""

    index: int
    budget_bytes: int
    memory: MemoryBreakdown  # the same components as memory.breakdown, for this device
    layers: tuple[int, int] | None  # first and last decoder layer held (inclusive); None: none
    modules: tuple[str, ...]  # target modules held, accelerate names
    holds_embedding: bool
    holds_lm_head: bool  # the verify logits come out here
    holds_draft: bool
    accelerate_weight_bytes: int  # target weights as accelerate counts them (with buffers)

    @property
    def used(self) -> bool:
        return bool(self.modules) or self.holds_draft

    @property
    def num_layers(self) -> int:
        return 0 if self.layers is None else self.layers[1] - self.layers[0] + 1

    def as_dict(self) -> dict:
        holds = [name for name, flag in (("embedding", self.holds_embedding), ("lm_head", self.holds_lm_head),
                                         ("draft", self.holds_draft)) if flag]
        return {
            "index": self.index,
            "budget_bytes": self.budget_bytes,
            "total_bytes": self.memory.total_bytes,
            "headroom_bytes": self.budget_bytes - self.memory.total_bytes,
            "components": dict(self.memory.components),
            "layers": list(self.layers) if self.layers else None,
            "num_layers": self.num_layers,
            "holds": holds,
            "modules": list(self.modules),
            "accelerate_weight_bytes": self.accelerate_weight_bytes,
        }


@dataclass(frozen=True)
class DeviceSplit:
    devices: tuple[DeviceShare, ...]
    policy: str
    draft_device: int | None  # None without a draft
    head_device: int  # where the verify logits come out
    device_map: dict  # target module -> device index, cleaned as accelerate cleans it
    max_memory: dict | None  # {device: bytes} under which infer_auto_device_map re-derives device_map
    hops: int  # device changes along one target forward (a tied lm_head adds the way back)
    duplicates: dict  # per-device duplicates beyond the one-device total: component -> bytes

    @property
    def used_devices(self) -> int:
        return sum(1 for d in self.devices if d.used)

    @property
    def total(self) -> MemoryBreakdown:
        return MemoryBreakdown({c: sum(d.memory.components[c] for d in self.devices) for c in COMPONENTS})

    @property
    def draft_device_map(self) -> dict | None:
        return None if self.draft_device is None else {"": self.draft_device}

    def per_device(self) -> list[dict]:
        """The plan's `per_device` payload."""
        return [d.as_dict() for d in self.devices]

    def as_dict(self) -> dict:
        return {
            "policy": self.policy, "num_devices": len(self.devices), "used_devices": self.used_devices,
            "draft_device": self.draft_device, "head_device": self.head_device, "hops": self.hops,
            "device_map": dict(self.device_map), "draft_device_map": self.draft_device_map,
            "max_memory": None if self.max_memory is None else {str(k): v for k, v in self.max_memory.items()},
            "duplicates": dict(self.duplicates), "total": self.total.as_dict(), "devices": self.per_device(),
        }


def _costs(target, draft, knobs, lay: Layout):
    """Plan-space cost of each unit (what its device must hold for it) and the draft's share."""
    B, k = knobs.batch_size, knobs.draft_length
    kv_total = kv_cache_bytes(target, B, kv_slots(target, knobs.max_context, k), knobs.cache_dtype)
    kv_layer = kv_total // target.num_layers
    specs = {s.name: s.nbytes for s in candidate_buffer_specs(target, draft, knobs)}
    input_buffers = specs.get("verify_mask", 0) + specs.get("lengths", 0)
    logits = specs["target_logits"]
    draft_buffers = sum(v for name, v in specs.items() if name.startswith("draft_"))
    act_target = _target_activation(target, knobs)
    act_all = activation_bytes(target, draft, knobs)
    draft_pack = 0
    if draft is not None:
        draft_kv = kv_cache_bytes(draft, B, kv_slots(draft, knobs.max_context, k), knobs.cache_dtype)
        draft_pack = weight_bytes(draft, knobs.draft_dtype) + draft_kv + draft_buffers + (act_all - act_target)
    head_extra = logits + draft_pack
    costs = []
    for u in lay.units:
        cost = u.weight_bytes
        if u.kind == "layer":
            cost += kv_layer
        if u.name == lay.embed_name:
            cost += input_buffers + (head_extra if lay.tied else 0)
        if u.kind == "head" and not lay.tied:
            cost += head_extra
        costs.append(cost)
    return costs, kv_layer, input_buffers, logits, draft_buffers, act_target, act_all


def _target_activation(target, knobs) -> int:
    """Peak transient of a target forward on any device: a prefill chunk or the verify pass."""
    B, k = knobs.batch_size, knobs.draft_length
    slots = kv_slots(target, knobs.max_context, k)
    dtype = compute_dtype(knobs.weight_dtype)
    return max(forward_activation_bytes(target, B, knobs.chunk, slots, dtype),
               forward_activation_bytes(target, B, k + 1, slots, dtype))


def _walk(costs, limits) -> list[int] | None:
    """Sequential placement: each unit on the current device while it fits, else the next one (never back).
    None when the units run out of devices."""
    n = len(limits)
    used = [0] * n
    where = []
    d = 0
    for cost in costs:
        while d < n and used[d] + cost > limits[d]:
            d += 1
        if d == n:
            return None
        used[d] += cost
        where.append(d)
    return where


def _smallest_cap(costs, limits) -> int:
    """The smallest common cap per device under which the walk still places every unit."""
    low, high = 0, max(limits)
    while low < high:
        mid = (low + high) // 2
        if _walk(costs, [min(lim, mid) for lim in limits]) is None:
            low = mid + 1
        else:
            high = mid
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
        placed = _walk(rest, [min(lim, cap) for lim in rest_limits])
        take = sum(1 for x in placed if x == 0)
        where += [d] * take
        start += take
    return where


def _placement(target, draft, knobs, budgets_per_device, overhead, policy):
    """Where each unit goes: (layout, unit -> device list, cost parts). Raises when it does not fit."""
    knobs.validate(has_draft=draft is not None)
    if policy not in POLICIES:
        raise SpecMemoError(f"unknown split policy {policy!r}", "choose one of: " + ", ".join(POLICIES))
    budgets = [int(b) for b in budgets_per_device]
    if not budgets or any(b <= 0 for b in budgets):
        raise SpecMemoError("every device needs a positive budget", "give --devices N with N >= 1")
    lay = layout(target, knobs.weight_dtype)
    costs, *parts = _costs(target, draft, knobs, lay)
    act_target = parts[4]
    fixed = overhead + act_target
    limits = [max(0, b - fixed) for b in budgets]
    # A tied lm_head (0 bytes, the last unit) goes with the embedding, as accelerate puts it.
    placed = costs[:-1] if lay.tied else costs
    where = _walk(placed, limits)
    if where is None:
        single = breakdown(target, draft, knobs, overhead).total_bytes
        raise SpecMemoError(
            f"the plan does not fit {len(budgets)} device(s) of {format_bytes(max(budgets))}: it needs "
            f"{format_bytes(single)} on one device, plus {format_bytes(fixed)} of runtime overhead and activations "
            "on each further device, in whole decoder layers",
            "add --devices, raise --budget, or lower --batch, --context or --draft-length",
        )
    if policy == "balanced" and len(budgets) > 1:
        where = _balanced_walk(placed, limits)
    if lay.tied:
        where = where + [where[0]]
    return budgets, lay, where, parts


def split_layers(
    target: ModelShape,
    draft: ModelShape | None,
    knobs: Knobs,
    budgets_per_device: Sequence[int],
    overhead: int = 0,
    policy: str = DEFAULT_POLICY,
) -> DeviceSplit:
    """Place the target's layers (and the draft) on devices with these budgets; see the module docstring.

    `overhead` is the runtime overhead of one device (its hardware profile's runtime_overhead_bytes).
    Raises SpecMemoError when the plan does not fit, saying what did not.
    """
    budgets, lay, where, parts = _placement(target, draft, knobs, budgets_per_device, overhead, policy)
    return _build_split(target, draft, knobs, budgets, overhead, policy, lay, where, *parts)


def _build_split(target, draft, knobs, budgets, overhead, policy, lay, where,
                 kv_layer, input_buffers, logits, draft_buffers, act_target, act_all) -> DeviceSplit:
    n = len(budgets)
    units = lay.units
    head_device = where[-1]
    embed_device = where[[u.name for u in units].index(lay.embed_name)]
    draft_device = head_device if draft is not None else None
    B, k = knobs.batch_size, knobs.draft_length
    draft_kv = (kv_cache_bytes(draft, B, kv_slots(draft, knobs.max_context, k), knobs.cache_dtype)
                if draft is not None else 0)
    devices = []
    for i in range(n):
        held = [u for u, d in zip(units, where) if d == i]
        modules = tuple(u.name for u in held)
        layer_ids = [u.layer for u in held if u.kind == "layer"]
        holds_draft = draft_device == i
        used = bool(held) or holds_draft
        buffers = (input_buffers if i == embed_device else 0) + (logits if i == head_device else 0)
        buffers += draft_buffers if holds_draft else 0
        components = {
            "target_weights": sum(u.weight_bytes for u in held),
            "draft_weights": weight_bytes(draft, knobs.draft_dtype) if holds_draft else 0,
            "target_kv": kv_layer * len(layer_ids),
            "draft_kv": draft_kv if holds_draft else 0,
            "candidate_buffers": buffers,
            # one forward at a time: the draft's device also runs the draft (activation_bytes over both)
            "activations": (act_all if holds_draft else act_target) if used else 0,
            "runtime_overhead": overhead if used else 0,
        }
        devices.append(DeviceShare(
            index=i, budget_bytes=budgets[i], memory=MemoryBreakdown(components),
            layers=(min(layer_ids), max(layer_ids)) if layer_ids else None, modules=modules,
            holds_embedding=i == embed_device, holds_lm_head=i == head_device, holds_draft=holds_draft,
            accelerate_weight_bytes=sum(u.accelerate_bytes for u in held),
        ))
    used_count = sum(1 for d in devices if d.used)
    duplicates = {"runtime_overhead": (used_count - 1) * overhead, "activations": (used_count - 1) * act_target}
    path = [d for u, d in zip(units, where) if not (lay.tied and u.kind == "head")]
    hops = sum(1 for a, b in zip(path, path[1:]) if a != b) + (1 if lay.tied and path[-1] != head_device else 0)
    device_map = clean_device_map({u.name: d for u, d in zip(units, where)})
    max_memory = _max_memory_for(target, knobs.weight_dtype, devices, device_map)
    return DeviceSplit(tuple(devices), policy, draft_device, head_device, device_map, max_memory, hops, duplicates)


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


def per_device_breakdowns(target, draft, knobs, budgets_per_device, overhead=0, policy=DEFAULT_POLICY) -> list[dict]:
    """Each device's components (MemoryBreakdown.as_dict() plus budget, layers, modules, what it holds)."""
    return split_layers(target, draft, knobs, budgets_per_device, overhead, policy).per_device()


def fits_split(target, draft, knobs, budgets_per_device, overhead=0) -> bool:
    """Does the plan fit these devices? (The same for both policies.)"""
    try:
        _placement(target, draft, knobs, budgets_per_device, overhead, "sequential")
    except SpecMemoError:
        return False
    return True


# ----------------------------------------------------------------------------- throughput


def _partial_shape(model: ModelShape, share: DeviceShare, lay: Layout) -> ModelShape | None:
    """The part of `model` one device holds, as a ModelShape the latency models read: its layers, its
    parameters, and the output layer's vocabulary only where the logits are computed (the tied lm_head
    reads the embedding matrix the same device holds)."""
    if share.num_layers == model.num_layers and share.holds_embedding and share.holds_lm_head:
        return model
    held = set(share.modules)
    params = sum(u.params for u in lay.units if u.name in held)
    if not params:
        return None
    return replace(model, num_layers=share.num_layers, num_params=params,
                   vocab_size=model.vocab_size if share.holds_lm_head else 0)


def device_forward_ms(split: DeviceSplit, target, dtype, latency, batch, num_tokens, context) -> list[float]:
    """Milliseconds of one target forward on each device (0 for devices holding nothing of the target)."""
    lay = layout(target, dtype)
    out = []
    for share in split.devices:
        shape = _partial_shape(target, share, lay)
        out.append(0.0 if shape is None else latency.forward_ms(shape, dtype, batch, num_tokens, context))
    return out


def transfer_ms(target: ModelShape, dtype: str, batch: int, num_tokens: int, interconnect_gbps: float | None) -> float:
    """One hop: the hidden state [B, n, H] in the compute dtype over the link (GB/s); 0 without a link figure."""
    if not interconnect_gbps:
        return 0.0
    nbytes = batch * num_tokens * target.hidden_size * dtype_bytes(compute_dtype(dtype))
    return nbytes / (interconnect_gbps * 1e9) * 1e3


@dataclass(frozen=True)
class SplitSpeed:
    speed: SpeedPrediction
    verify_ms_per_device: tuple[float, ...]  # one target forward of B x (k+1) tokens, per device
    decode_ms_per_device: tuple[float, ...]  # one target forward of B x 1 token, per device
    transfer_ms_per_step: float  # hidden-state hops of one verify pass
    draft_ms: float  # one draft forward on its device


def predict_split_speed(
    split: DeviceSplit,
    target: ModelShape,
    draft: ModelShape | None,
    knobs: Knobs,
    latency,
    interconnect_gbps: float | None = None,
    acceptance: float = DEFAULT_ACCEPTANCE,
    histogram: Sequence[float] | None = None,
) -> SplitSpeed:
    """Tokens/s over N devices run one after another (no pipelining overlap): a target forward takes the
    sum of the per-device forwards plus one hidden-state transfer per hop; the draft runs on its device.
    Plain decoding is timed on the same placement. With one device this is throughput.predict_speed."""
    B, k, ctx = knobs.batch_size, knobs.draft_length, mean_context(knobs)
    dtype = knobs.weight_dtype
    decode = device_forward_ms(split, target, dtype, latency, B, 1, ctx)
    plain_ms = sum(decode) + split.hops * transfer_ms(target, dtype, B, 1, interconnect_gbps)
    plain = B / plain_ms * 1e3
    if draft is None or k == 0:
        speed = SpeedPrediction(plain, plain, 1.0, 1.0, 0.0, plain_ms, plain_ms)
        return SplitSpeed(speed, tuple(decode), tuple(decode), 0.0, 0.0)
    if histogram is not None:
        tokens = expected_tokens_from_histogram(histogram, k)
        acceptance = acceptance_from_histogram(histogram)
    else:
        tokens = expected_tokens_per_step(acceptance, k)
    verify = device_forward_ms(split, target, dtype, latency, B, k + 1, ctx)
    hop_ms = split.hops * transfer_ms(target, dtype, B, k + 1, interconnect_gbps)
    draft_ms = latency.forward_ms(draft, knobs.draft_dtype, B, 1, ctx)
    step_ms = k * draft_ms + sum(verify) + hop_ms
    speed = B * tokens / step_ms * 1e3
    prediction = SpeedPrediction(speed, plain, speed / plain, tokens, acceptance, step_ms, plain_ms)
    return SplitSpeed(prediction, tuple(verify), tuple(decode), hop_ms, draft_ms)


# ----------------------------------------------------------------------------- budget questions


def min_budget_split(
    target: ModelShape,
    draft: ModelShape,
    knobs: Knobs,
    latency,
    num_devices: int,
    overhead: int = 0,
    interconnect_gbps: float | None = None,
    retain: float | None = None,
    k_max: int = 16,
    acceptance: float = DEFAULT_ACCEPTANCE,
):
    """The smallest per-device budget (the same on every device) at which some k still pays over plain
    decoding (or keeps `retain` of the best k's tokens/s), and that k. Returns (budget, k, split, speed)."""
    if retain is not None and not 0 < retain <= 1:
        raise SpecMemoError(f"retain must be within (0, 1], got {retain}")
    options = []
    for k in range(1, k_max + 1):
        kk = replace(knobs, draft_length=k)
        high = breakdown(target, draft, kk, overhead).total_bytes  # one device always suffices at this size
        low = 1
        while low < high:
            mid = (low + high) // 2
            if fits_split(target, draft, kk, [mid] * num_devices, overhead):
                high = mid
            else:
                low = mid + 1
        split = split_layers(target, draft, kk, [low] * num_devices, overhead, "balanced")
        speed = predict_split_speed(split, target, draft, kk, latency, interconnect_gbps, acceptance)
        options.append((low, k, split, speed))
    best = max(o[3].speed.tokens_per_s for o in options)
    paying = [o for o in options if o[3].speed.speedup > 1.0
              and (retain is None or o[3].speed.tokens_per_s >= retain * best)]
    if not paying:
        top = max(options, key=lambda o: o[3].speed.speedup)
        raise SpecMemoError(
            f"speculative decoding does not pay here: the best predicted speedup is {top[3].speed.speedup:.2f}x (k={top[1]})",
            "plain decoding is faster; a better-matched draft or a higher acceptance would change that",
        )
    return min(paying, key=lambda o: (o[0], o[1]))


def largest_split(knob: str, target, draft, knobs, budgets, overhead=0, high: int = 4096) -> int | None:
    """Largest batch_size, max_context or draft_length (the others fixed) that fits the devices."""
    from .budget import _largest

    if knob == "draft_length" and draft is None:
        return None
    if knob == "max_context":
        high = target.max_position_embeddings
    return _largest(lambda v: fits_split(target, draft, replace(knobs, **{knob: v}), budgets, overhead), 1, high)


# ----------------------------------------------------------------------------- plans


def make_split_plan(
    target_ref: str,
    target: ModelShape,
    draft_ref: str | None,
    draft: ModelShape | None,
    knobs: Knobs,
    device,
    budgets_per_device: Sequence[int],
    generation,
    overhead: int = 0,
    throughput: dict | None = None,
    provenance: dict | None = None,
    policy: str = DEFAULT_POLICY,
):
    """A multi-device plan: plan.Plan with `device.count` devices, `budget_bytes` the per-device budget (the
    largest, when they differ), `prediction.memory` the sum over devices and `per_device` each device's share."""
    from dataclasses import replace as dc_replace

    from .plan import Plan, Prediction, model_ref

    knobs.validate(has_draft=draft is not None)
    if generation.max_new_tokens >= knobs.max_context:
        raise SpecMemoError(
            f"max_new_tokens ({generation.max_new_tokens}) leaves no room for a prompt in a {knobs.max_context}-token context",
            "raise --context or lower --max-new-tokens",
        )
    split = split_layers(target, draft, knobs, budgets_per_device, overhead, policy)
    info = {"split": {"policy": split.policy, "draft_device": split.draft_device, "head_device": split.head_device,
                      "hops": split.hops, "device_map": dict(split.device_map),
                      "max_memory": None if split.max_memory is None else {str(k): v for k, v in split.max_memory.items()},
                      "duplicates": split.duplicates}}
    return Plan(
        target=model_ref(target_ref, target, knobs.weight_dtype),
        draft=model_ref(draft_ref, draft, knobs.draft_dtype) if draft is not None else None,
        device=dc_replace(device, count=len(budgets_per_device)),
        budget_bytes=max(budgets_per_device),
        knobs=knobs,
        generation=generation,
        prediction=Prediction(memory=split.total.as_dict(), **(throughput or {})),
        provenance={**(provenance or {}), **info},
        per_device=split.per_device(),
    ), split


def device_map_from_plan(plan) -> tuple[dict, dict | None, dict | None]:
    """(target device_map, draft device_map, max_memory) for the engine, from a plan's `per_device` alone.
    One-device plans: everything on device 0."""
    if not plan.per_device:
        return {"": 0}, ({"": 0} if plan.draft else None), None
    target_map, draft_device, max_memory = {}, None, {}
    for i, entry in enumerate(plan.per_device):
        where = f"per_device[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("modules"), list):
            raise SpecMemoError(f"plan field {where}.modules is missing", "regenerate the plan with --devices")
        index = entry.get("index", i)
        for name in entry["modules"]:
            target_map[name] = index
        if "draft" in (entry.get("holds") or []):
            draft_device = index
        max_memory[index] = entry.get("accelerate_weight_bytes", 0)
    split = plan.provenance.get("split", {}) if isinstance(plan.provenance, dict) else {}
    if split.get("max_memory"):
        max_memory = {int(k): v for k, v in split["max_memory"].items()}
    draft_map = {"": draft_device if draft_device is not None else 0} if plan.draft else None
    return clean_device_map(target_map), draft_map, max_memory
