"""Probing the local machine: which GPUs and how much memory, as the libraries and the OS report them.

NVIDIA through NVML (`nvidia-ml-py`), AMD through `amdsmi` (whose import raises KeyError and prints to stdout
on machines without ROCm; both contained), torch's CUDA/ROCm view when neither library found a GPU, and
always the CPU. Probing never writes to stdout (stdout is for the command's data: see `quiet`), and a missing
library or driver gives a one-line note, never an exception.

No torch, pynvml or amdsmi import at module level: each is imported inside the function that needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass, field

from ..errors import SpecMemoError
from . import procfs
from .matching import match_profile
from .quiet import one_line, quiet_stdout, reason, try_call

PROBE_NOTE_CHARS = 200  # one_line's limit for the notes probe_devices returns: room for a device's name
GiB = 2**30


@dataclass(frozen=True)
class ProbedDevice:
    """One device this machine has, as a library or the OS reports it."""

    index: int  # index within its source (NVML / amdsmi / torch order); 0 for the CPU
    backend: str  # "cuda" | "rocm" | "cpu"
    name: str  # name as reported (NVML name, amdsmi market name, torch name, CPU model name)
    total_memory_bytes: int  # total memory as reported (CPU: MemTotal, or the cgroup limit when lower); 0 if unknown
    free_memory_bytes: int | None  # free memory now, None when the source cannot tell
    details: dict = field(hash=False)  # extra facts: bus width bits, memory clock MHz, cores, PCI bus id, ...
    source: str = ""  # "nvml" | "amdsmi" | "torch" | "procfs" | "sysconf"
    profile_key: str | None = None  # the matched profile, or None


def theoretical_bandwidth_gbps(bus_width_bits: int, memory_clock_mhz: float, data_rate: float = 2.0) -> float:
    """Peak memory bandwidth from the bus: bus_width_bits / 8 * memory_clock_mhz * 1e6 * data_rate / 1e9 GB/s.

    The formula is the one every spec sheet's figure comes from (bytes per transfer x transfers per second).
    `data_rate` is transfers per reported clock. NVML's max memory clock (nvmlDeviceGetMaxClockInfo with
    NVML_CLOCK_MEM) is half the effective transfer rate for GDDR6/6X and HBM2/2e/3 alike, so 2.0 reproduces the
    sheets from NVML: RTX 3090 384 bit x 9751 MHz -> 936 GB/s; A100 40GB 5120 bit x 1215 MHz -> 1555 GB/s;
    H100 SXM 5120 bit x 2619 MHz -> 3352 GB/s; T4 256 bit x 5001 MHz -> 320 GB/s. amdsmi's MCLK does not follow
    one ratio across HBM generations, so the probe computes this for NVML only.
    """
    if bus_width_bits <= 0 or memory_clock_mhz <= 0 or data_rate <= 0:
        raise ValueError("bus width, memory clock and data rate must be positive")
    return bus_width_bits / 8 * memory_clock_mhz * 1e6 * data_rate / 1e9


def _nvml_details(pynvml, h) -> dict:
    """What NVML knows beyond name and memory; every call optional (older bindings lack some)."""
    details: dict = {}
    bus = try_call(pynvml, "nvmlDeviceGetMemoryBusWidth", h)
    clock = try_call(pynvml, "nvmlDeviceGetMaxClockInfo", h, getattr(pynvml, "NVML_CLOCK_MEM", 2))
    if bus:
        details["memory_bus_width_bits"] = int(bus)
    if clock:
        details["max_memory_clock_mhz"] = int(clock)
    if bus and clock:
        details["theoretical_bandwidth_gbps"] = round(theoretical_bandwidth_gbps(int(bus), int(clock)), 1)
    cc = try_call(pynvml, "nvmlDeviceGetCudaComputeCapability", h)
    if cc:
        details["compute_capability"] = f"{cc[0]}.{cc[1]}"
    pci = try_call(pynvml, "nvmlDeviceGetPciInfo", h)
    bus_id = getattr(pci, "busId", None) if pci is not None else None
    if bus_id:
        details["pci_bus_id"] = bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id)
    gen = try_call(pynvml, "nvmlDeviceGetMaxPcieLinkGeneration", h)
    width = try_call(pynvml, "nvmlDeviceGetMaxPcieLinkWidth", h)
    if gen and width:
        details["max_pcie_link"] = f"gen{gen} x{width}"
    return details


def _probe_nvml() -> tuple[list[ProbedDevice], list[str]]:
    printed: list[str] = []
    try:
        with quiet_stdout(printed):
            import pynvml
    except Exception as e:  # ImportError, or anything a broken install raises
        return [], [f"NVML not available: nvidia-ml-py could not be imported ({reason(e, printed)})"]
    try:
        with quiet_stdout(printed):
            pynvml.nvmlInit()
    except Exception as e:
        return [], [f"NVML not available: {reason(e, printed)}"]
    devices: list[ProbedDevice] = []
    try:
        with quiet_stdout(printed):
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                if isinstance(name, bytes):
                    name = name.decode("utf-8", "replace")
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                devices.append(ProbedDevice(index=i, backend="cuda", name=str(name), total_memory_bytes=int(mem.total),
                                            free_memory_bytes=int(mem.free), details=_nvml_details(pynvml, h),
                                            source="nvml"))
    except Exception as e:
        return devices, [f"NVML failed while listing devices: {reason(e, printed)}"]
    finally:
        with contextlib.suppress(Exception), quiet_stdout(printed):
            pynvml.nvmlShutdown()
    notes = [] if devices else ["NVML: no NVIDIA GPU found"]
    if devices and os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, ""):
        notes.append("NVML lists every GPU; CUDA_VISIBLE_DEVICES restricts what torch will use")
    return devices, notes


def _amdsmi_device(amdsmi, i: int, h) -> ProbedDevice:
    vram = getattr(getattr(amdsmi, "AmdSmiMemoryType", None), "VRAM", 0)
    mem_clk = getattr(getattr(amdsmi, "AmdSmiClkType", None), "MEM", None)
    asic = try_call(amdsmi, "amdsmi_get_gpu_asic_info", h) or {}
    total = try_call(amdsmi, "amdsmi_get_gpu_memory_total", h, vram)
    used = try_call(amdsmi, "amdsmi_get_gpu_memory_usage", h, vram)
    details: dict = {}
    info = try_call(amdsmi, "amdsmi_get_gpu_vram_info", h) or {}
    if isinstance(info, dict) and isinstance(info.get("vram_bit_width"), int):
        details["memory_bus_width_bits"] = info["vram_bit_width"]
    clk = (try_call(amdsmi, "amdsmi_get_clock_info", h, mem_clk) if mem_clk is not None else None) or {}
    if isinstance(clk, dict) and isinstance(clk.get("max_clk"), int):
        details["max_memory_clock_mhz"] = clk["max_clk"]
    if asic.get("target_graphics_version"):
        details["gfx_target"] = str(asic["target_graphics_version"])
    bdf = try_call(amdsmi, "amdsmi_get_gpu_device_bdf", h)
    if bdf:
        details["pci_bus_id"] = str(bdf)
    total_i = int(total) if isinstance(total, int) else 0
    return ProbedDevice(
        index=i, backend="rocm", name=str(asic.get("market_name") or "").strip() or f"AMD GPU {i}",
        total_memory_bytes=total_i, free_memory_bytes=total_i - int(used) if isinstance(used, int) and total_i else None,
        details=details, source="amdsmi",
    )


def _probe_amdsmi() -> tuple[list[ProbedDevice], list[str]]:
    printed: list[str] = []
    try:
        # Without ROCm, `import amdsmi` prints to stdout and raises KeyError (its ctypes wrapper swallows the
        # OSError of the missing libamd_smi.so, then indexes a dict that was never filled).
        with quiet_stdout(printed):
            import amdsmi
    except BaseException as e:  # KeyError, ImportError, OSError, even SystemExit from a broken wrapper
        if isinstance(e, KeyboardInterrupt):
            raise
        if isinstance(e, ModuleNotFoundError) and getattr(e, "name", None) == "amdsmi":
            return [], ["amdsmi not available: the amdsmi package is not installed"]
        return [], [f"amdsmi not available: {reason(e, printed)}"]
    try:
        with quiet_stdout(printed):
            amdsmi.amdsmi_init()
    except Exception as e:
        return [], [f"amdsmi not available: {reason(e, printed)}"]
    devices: list[ProbedDevice] = []
    try:
        with quiet_stdout(printed):
            for i, h in enumerate(amdsmi.amdsmi_get_processor_handles()):
                devices.append(_amdsmi_device(amdsmi, i, h))
    except Exception as e:
        return devices, [f"amdsmi failed while listing devices: {reason(e, printed)}"]
    finally:
        with contextlib.suppress(Exception), quiet_stdout(printed):
            amdsmi.amdsmi_shut_down()
    return devices, ([] if devices else ["amdsmi: no AMD GPU found"])


def _probe_torch() -> tuple[list[ProbedDevice], list[str]]:
    try:
        present = "torch" in sys.modules or importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        present = False
    if not present:
        return [], ["torch not installed: no CUDA/ROCm probe through torch"]
    printed: list[str] = []
    try:
        with quiet_stdout(printed):
            import torch

            hip = getattr(torch.version, "hip", None)
            if not torch.cuda.is_available():
                build = f"ROCm {hip}" if hip else (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only")
                return [], [f"torch {torch.__version__} ({build}): no CUDA/ROCm device visible"]
            return [_torch_device(torch, i, hip) for i in range(torch.cuda.device_count())], []
    except Exception as e:
        return [], [f"torch device probe failed: {reason(e, printed)}"]


def _torch_device(torch, i: int, hip: str | None) -> ProbedDevice:
    props = torch.cuda.get_device_properties(i)
    details: dict = {"multiprocessors": int(props.multi_processor_count)}
    if hip:
        arch = getattr(props, "gcnArchName", None)
        if arch:
            details["gfx_target"] = str(arch)
    else:
        details["compute_capability"] = f"{props.major}.{props.minor}"
    got = try_call(torch.cuda, "mem_get_info", i)
    return ProbedDevice(index=i, backend="rocm" if hip else "cuda", name=str(props.name),
                        total_memory_bytes=int(props.total_memory), free_memory_bytes=int(got[0]) if got else None,
                        details=details, source="torch")


def _probe_cpu() -> tuple[ProbedDevice, list[str]]:
    notes: list[str] = []
    info = procfs.meminfo_bytes()
    total = info.get("MemTotal", 0)
    free = info.get("MemAvailable")
    source = "procfs"
    if not total:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            source = "sysconf"
        except (ValueError, OSError, AttributeError):
            total = 0
        if not total:
            notes.append("host RAM unknown: no /proc/meminfo and no sysconf")
    details: dict = {"logical_cores": os.cpu_count() or 0}
    if hasattr(os, "sched_getaffinity"):
        with contextlib.suppress(OSError):
            details["usable_cores"] = len(os.sched_getaffinity(0))
    details["machine"] = platform.machine()
    limit, usage = procfs.cgroup_memory()
    if limit is not None and total and limit < total:
        details["meminfo_total_bytes"] = total
        details["cgroup_limit_bytes"] = limit
        notes.append(f"host RAM limited by the memory cgroup to {limit / GiB:.1f} GiB of {total / GiB:.1f} GiB")
        total = limit
        if usage is not None:
            free = max(0, limit - usage) if free is None else min(free, max(0, limit - usage))
    dev = ProbedDevice(index=0, backend="cpu", name=procfs.cpu_model_name(), total_memory_bytes=int(total),
                       free_memory_bytes=int(free) if free is not None else None, details=details, source=source)
    return dev, notes


def probe_devices(*, use_torch: bool = True) -> tuple[list[ProbedDevice], list[str]]:
    """This machine's devices (GPUs first, the CPU last) and one-line notes on what could not be probed.

    NVIDIA through NVML, AMD through amdsmi; torch (imported only here) when neither found a GPU and
    `use_torch` is set: Jetson, ROCm without amdsmi. Never raises for a missing library or driver and never
    writes to stdout. Each device carries the key of the profile it matches, or None.
    """
    notes: list[str] = []
    gpus: list[ProbedDevice] = []
    for probe in (_probe_nvml, _probe_amdsmi):
        found, said = probe()
        gpus += found
        notes += said
    if not gpus and use_torch:
        found, said = _probe_torch()
        gpus += found
        notes += said
    cpu, said = _probe_cpu()
    notes += said
    devices = [dataclasses.replace(d, profile_key=_safe_match(d)) for d in gpus + [cpu]]
    for d in devices:
        if d.profile_key is None and d.backend != "cpu":
            notes.append(f"no bundled profile matches '{d.name}' ({d.total_memory_bytes / GiB:.1f} GiB)")
    return devices, [one_line(n, PROBE_NOTE_CHARS) for n in notes]


def _safe_match(device: ProbedDevice) -> str | None:
    try:
        return match_profile(device)
    except SpecMemoError:
        return None
