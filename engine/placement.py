"""Per-device plans in the engine: check the machine, place the models as the plan's split says.

A plan with `device.count` N > 1 splits the target layer-wise (specmemo_plan.split). Here:
- `check_devices` refuses it on a machine with fewer than N CUDA/ROCm devices, in one line;
- `load_split` loads the target with the plan's accelerate `device_map` and `max_memory`
  (accelerate's hooks move the hidden states from device to device), and the draft whole on the
  device the plan gives it (beside the output layer);
- `layer_devices` says where each decoder layer's KV cache lives: on its layer's device.
"""

from __future__ import annotations

import torch

from specmemo_plan.errors import SpecMemoError
from specmemo_plan.plan import Plan


def visible_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_devices(plan: Plan) -> None:
    """A multi-device plan needs as many CUDA/ROCm devices as it spans."""
    count = plan.device.count
    if count <= 1:
        return
    have = visible_devices()
    if plan.device.kind == "cpu" or have < count:
        what = f"{have} {plan.device.kind.upper()} device{'s' if have != 1 else ''}" if plan.device.kind != "cpu" else "a CPU"
        raise SpecMemoError(
            f"device.count: the plan spans {count} devices, this machine has {what} visible to torch",
            f"run it on a machine with {count} devices, or make a one-device plan (omit --devices)",
        )


def split_maps(plan: Plan) -> tuple[dict, dict | None, dict | None]:
    """(target device_map, draft device_map, max_memory) from the plan's placement."""
    from specmemo_plan.placement import engine_device_maps

    return engine_device_maps(plan.placement, plan.draft is not None)


def load_split(plan: Plan, role: str, seed: int):
    """The plan's target (or draft) placed over its devices. Trained weights go through
    from_pretrained(device_map, max_memory); random presets are built on the meta device and
    dispatched, then initialised on their devices."""
    from accelerate import dispatch_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from specmemo_plan.models import load_shape, random_weight_config

    from .loading import LoadedModel, torch_dtype, weights_folder

    ref = plan.target.ref if role == "target" else plan.draft.ref
    dtype = plan.knobs.weight_dtype if role == "target" else plan.knobs.draft_dtype
    target_map, draft_map, max_memory = split_maps(plan)
    device_map = target_map if role == "target" else draft_map
    shape = load_shape(ref)
    folder = weights_folder(ref)
    if folder is not None:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype(dtype), device_map=device_map, max_memory=max_memory if role == "target" else None
        )
        return LoadedModel(model.eval(), shape, random_weights=False)
    cfg = random_weight_config(shape)  # a preset or a config.json alike
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch_dtype(dtype))
    model.to_empty(device="cpu")  # materialise, then initialise and move per the map
    model.init_weights() if hasattr(model, "init_weights") else None
    model = dispatch_model(model, device_map=device_map)
    return LoadedModel(model.eval(), shape, random_weights=True)


def layer_devices(model: torch.nn.Module, num_layers: int) -> list[torch.device]:
    """The device of each decoder layer's weights: where its KV cache must live."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return [next(layer.parameters()).device for layer in body.layers[:num_layers]]
