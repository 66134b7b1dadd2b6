"""Where the plan's parts live: one device, or the target split layer-wise over N (docs/placement.md).

- `layout.py`: a model's placement units (the modules accelerate places whole) and their bytes;
- `accelerate.py`: accelerate's `infer_auto_device_map`, replayed without torch;
- `split.py`: what each device holds (`DeviceShare`), how they connect (`Placement`), the fit test.
"""

from .accelerate import accelerate_device_map, clean_device_map, resolve
from .layout import NO_SPLIT_CLASSES, Layout, Unit, layout
from .split import DEFAULT_POLICY, POLICIES, DeviceShare, DeviceSplit, Placement, engine_device_maps, fits, split_layers

__all__ = [
    "DEFAULT_POLICY", "POLICIES", "NO_SPLIT_CLASSES", "DeviceShare", "DeviceSplit", "Layout", "Placement", "Unit",
    "accelerate_device_map", "clean_device_map", "engine_device_maps", "fits", "layout", "resolve", "split_layers",
]
