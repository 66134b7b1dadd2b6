"""accelerate's `infer_auto_device_map`, replayed on a model's placement units (pure Python, no torch).

Read from accelerate 1.15, `utils/modeling.py` (docs/placement.md): a sequential walk over the model's
children, splitting a module that does not fit unless it is a no-split decoder layer, never going back;
the first GPU keeps room for the largest layer still to place (`get_max_layer_size`); a tied `lm_head`
counts 0 bytes and goes with the embedding. Tests check the replay against the real function on
meta-device models for many limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..models import ModelShape
from .layout import Layout, layout


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

