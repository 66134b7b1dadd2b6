"""Which device am I on: the one answer that the CLI, the autotuner, the engine and the benchmarks share.

A plan records the device it was made for (`plan.DeviceSpec`); this module decides what that is, from a
named profile or from the probe, so that every command that writes a plan agrees on it.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SpecMemoError
from . import probe
from .matching import profile_for_device
from .profiles import HardwareProfile, load_profile

if TYPE_CHECKING:
    from ..plan import DeviceSpec
    from .probe import ProbedDevice

TORCH_DEVICE_KINDS = ("cpu", "cuda")  # torch calls ROCm GPUs "cuda" as well


@dataclass(frozen=True)
class LocalDevice:
    """The device (or N alike devices) a plan is for, and what is known about it."""

    spec: DeviceSpec  # what the plan records: kind, name, memory of one device, profile key, count
    profile: HardwareProfile | None  # spec-sheet numbers (memory: the probed total); None when no profile matches
    memory_bytes: int  # of one device: the smallest among the `spec.count` used
    torch_device: str | None  # the torch device that runs on it ("cpu", "cuda", "cuda:1"); None for a named profile


def this_device(profile_name: str | None = None, count: int = 1, torch_device: str | None = None,
                use_torch: bool = False) -> LocalDevice:
    """The device a plan is for.

    - `profile_name` given: `count` devices of that profile. The machine is not consulted, since a plan is
      often made for another machine.
    - `torch_device` given ("cpu", "cuda", "cuda:1"): the probed device torch will run on: the CPU, or the
      N-th GPU of the torch build's kind in the probe's order. torch numbers GPUs the same way only with
      CUDA_DEVICE_ORDER=PCI_BUS_ID and no CUDA_VISIBLE_DEVICES (CUDA's default puts the fastest first), which
      matters only on a machine with unlike GPUs. `count` must then be 1.
    - neither: the first `count` GPUs the probe finds, the memory being that of the smallest; with one device
      asked for and no GPU, the CPU.

    `use_torch` lets the probe ask torch when NVML and amdsmi found no GPU (Jetson, ROCm without amdsmi); it
    imports torch, so only callers that run torch anyway set it.
    """
    if count < 1:
        raise SpecMemoError(f"device count must be at least 1, got {count}", None)
    if torch_device is not None and count != 1:
        raise ValueError("torch_device names one device; count must be 1")
    if profile_name:
        prof = load_profile(profile_name)
        return LocalDevice(_spec(prof.backend, prof.name, prof.memory_bytes, prof, count), prof, prof.memory_bytes,
                           torch_device)
    devices, _notes = probe.probe_devices(use_torch=use_torch)
    if torch_device is not None:
        chosen = [_for_torch_device(devices, torch_device)]
    else:
        chosen = _first_gpus(devices, count)
    first = chosen[0]
    memory = min(d.total_memory_bytes for d in chosen)
    prof = profile_for_device(dataclasses.replace(first, total_memory_bytes=memory)) if first.profile_key else None
    kind = "cpu" if first.backend == "cpu" else "cuda"
    return LocalDevice(_spec(first.backend, first.name, memory, prof, count), prof, memory, torch_device or kind)


def _spec(kind: str, name: str, memory_bytes: int, prof: HardwareProfile | None, count: int) -> DeviceSpec:
    from ..plan import DeviceSpec  # the plan module pulls in the memory model: not needed to import hardware

    return DeviceSpec(kind=kind, name=name, total_memory_bytes=memory_bytes, profile=prof.key if prof else None,
                      count=count)


def _first_gpus(devices: list[ProbedDevice], count: int) -> list[ProbedDevice]:
    """The first `count` GPUs; the CPU (the probe's last device) when one device is asked for and none is a GPU."""
    gpus = [d for d in devices if d.backend != "cpu"]
    if count == 1 and not gpus:
        return [devices[-1]]
    if len(gpus) < count:
        raise SpecMemoError(
            f"--devices {count} needs {count} GPUs; this machine shows {len(gpus)}",
            "name the device kind with --profile (for example --profile mi250-gcd or --profile a100-40gb)",
        )
    return gpus[:count]


def _for_torch_device(devices: list[ProbedDevice], torch_device: str) -> ProbedDevice:
    """The probed device behind a torch device string."""
    kind, _, index = torch_device.strip().lower().partition(":")
    if kind not in TORCH_DEVICE_KINDS or (index and not index.isdigit()):
        raise SpecMemoError(f"unknown torch device '{torch_device}'", "give cpu, cuda or cuda:N")
    if kind == "cpu":
        return devices[-1]
    gpus = [d for d in devices if d.backend in _torch_gpu_backends()]
    i = int(index or 0)
    if i >= len(gpus):
        raise SpecMemoError(
            f"torch device '{torch_device}' asked for, but the probe finds {len(gpus)} GPU{'s' if len(gpus) != 1 else ''}",
            "run with --device cpu, or see `specmemo-plan devices` for what the drivers report",
        )
    return gpus[i]


def _torch_gpu_backends() -> tuple[str, ...]:
    """The GPU kind torch runs on: its build says (CUDA or ROCm) when the caller has imported it; else either."""
    torch = sys.modules.get("torch")
    version = getattr(torch, "version", None)
    if version is None:
        return ("cuda", "rocm")
    return ("rocm",) if getattr(version, "hip", None) else ("cuda",)
