"""Measured memory beside the plan's prediction.

- CPU: the exact bytes of the engine's tensors (weights, KV caches, step buffers), and the process
  peak resident set (VmHWM) per phase: the peak is reset at the start of each phase by writing '5'
  to /proc/self/clear_refs (Linux), after returning freed heap pages to the OS (malloc_trim), so a
  phase's peak minus its starting RSS is the transient memory of that phase.
- CUDA / ROCm: torch's peak allocated and reserved bytes per phase, and the device's own view
  (NVML on NVIDIA, amdsmi on AMD). Both libraries are optional; their import failures are contained
  (amdsmi raises KeyError and prints to stdout when ROCm is absent).

`memory_report` puts a probe's numbers beside the plan's predicted breakdown, component by
component, with the error of each as specmemo_plan.quantities.error_percent (measured relative
to predicted: positive when the plan predicted too little).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import time

import torch

from specmemo_plan.quantities import error_percent


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters, tied weights once (model.parameters() deduplicates)."""
    return tensor_bytes(model.parameters())


# ----------------------------------------------------------------------------- CPU


def _proc_status() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024  # kB
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: echo 5 > /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so the next phase's peak starts honest."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class CpuProbe:
    kind = "cpu"
    source = "cpu: exact bytes of the engine's tensors; per phase, peak RSS (VmHWM, reset via /proc/self/clear_refs) minus the RSS at the start of the phase"

    def __init__(self):
        self.phases: dict[str, dict] = {}
        self.can_reset = reset_peak_rss()

    @contextlib.contextmanager
    def phase(self, name: str):
        trim_heap()
        start = _proc_status().get("VmRSS")
        reset = reset_peak_rss()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            status = _proc_status()
            peak = status.get("VmHWM")
            record = {
                "seconds": time.perf_counter() - t0,
                "start_rss_bytes": start,
                "peak_rss_bytes": peak,
                # without a reset, VmHWM is the peak of the whole process: no phase delta
                "transient_peak_bytes": max(0, peak - start) if reset and peak is not None and start else None,
            }
            previous = self.phases.get(name)
            if previous and (previous["transient_peak_bytes"] or 0) > (record["transient_peak_bytes"] or 0):
                record = previous
            self.phases[name] = record

    def process(self) -> dict:
        status = _proc_status()
        return {"rss_bytes": status.get("VmRSS"), "peak_rss_bytes": status.get("VmHWM")}


# ----------------------------------------------------------------------------- CUDA / ROCm


def _nvml_used(index: int) -> dict | None:
    """NVML's view: memory used on the device, and by this process when NVML lists it."""
    try:
        import pynvml
    except Exception:
        return None
    try:
        pynvml.nvmlInit()
        handle = None
        try:
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        except Exception:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        own = None
        try:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid():
                    own = proc.usedGpuMemory
        except Exception:
            pass
        return {"source": "nvml", "device_used_bytes": int(info.used), "device_total_bytes": int(info.total), "process_used_bytes": own}
    except Exception:
        return None


def _amdsmi_used(index: int) -> dict | None:
    """amdsmi's view (ROCm). Import raises KeyError and prints to stdout without ROCm: contained."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import amdsmi

            amdsmi.amdsmi_init()
            handles = amdsmi.amdsmi_get_processor_handles()
            usage = amdsmi.amdsmi_get_gpu_vram_usage(handles[index])
        mib = 2**20
        return {"source": "amdsmi", "device_used_bytes": int(usage["vram_used"]) * mib, "device_total_bytes": int(usage["vram_total"]) * mib}
    except BaseException as exc:  # noqa: BLE001 - KeyError, ImportError, AmdSmiException, SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None


class CudaProbe:
    def __init__(self, device: torch.device):
        self.device = device
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        self.kind = "rocm" if torch.version.hip else "cuda"
        self.source = f"{self.kind}: torch peak allocated/reserved per phase, plus " + ("amdsmi" if torch.version.hip else "NVML")
        self.phases: dict[str, dict] = {}

    def device_view(self) -> dict | None:
        return _amdsmi_used(self.index) if torch.version.hip else _nvml_used(self.index)

    @contextlib.contextmanager
    def phase(self, name: str):
        torch.cuda.synchronize(self.device)
        start = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            record = {
                "seconds": time.perf_counter() - t0,
                "start_allocated_bytes": start,
                "peak_allocated_bytes": peak,
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
                "transient_peak_bytes": peak - start,
                "device": self.device_view(),
            }
            previous = self.phases.get(name)
            if previous and previous["transient_peak_bytes"] > record["transient_peak_bytes"]:
                record = previous
            self.phases[name] = record

    def process(self) -> dict:
        return {
            "allocated_bytes": torch.cuda.memory_allocated(self.device),
            "peak_allocated_bytes": max([p["peak_allocated_bytes"] for p in self.phases.values()] or [0]),
            "peak_reserved_bytes": max([p["peak_reserved_bytes"] for p in self.phases.values()] or [0]),
            "device": self.device_view(),
        }


def make_probe(device: torch.device):
    return CudaProbe(device) if device.type == "cuda" else CpuProbe()


# ----------------------------------------------------------------------------- beside the prediction


def _component_error(measured: int | None, predicted: int | None) -> float | None:
    if measured is not None and predicted == 0:
        return 0.0 if measured == 0 else None  # nothing predicted: exact, or no percentage to give
    return error_percent(measured, predicted)


def memory_report(predicted: dict, static: dict[str, int], probe, device: torch.device, cap: dict | None) -> dict:
    """{"predicted": the plan's breakdown, "measured": components, transient peaks, error %}.

    `static`: exact bytes of the engine's tensors per component; activations are the largest
    transient peak of any phase; runtime overhead is what the device's own view holds beyond
    torch's reserved bytes (CUDA/ROCm), 0 on CPU. `cap`: the engine's budget cap, if any."""
    components = dict(static)
    phases = dict(probe.phases)
    transients = [p["transient_peak_bytes"] for p in phases.values() if p.get("transient_peak_bytes") is not None]
    components["activations"] = max(transients) if transients else None
    components["runtime_overhead"] = None
    process = probe.process()
    if device.type == "cuda":
        own = (process.get("device") or {}).get("process_used_bytes")
        if own is not None and process["peak_reserved_bytes"]:
            components["runtime_overhead"] = max(0, own - process["peak_reserved_bytes"])
    else:
        components["runtime_overhead"] = 0
    expected = predicted.get("components", {})
    total = sum(v for v in components.values() if v is not None)
    measured = {
        "source": probe.source,
        "components": components,
        "total_bytes": total,
        "generation_bytes": total - components["target_weights"] - components["draft_weights"],
        "error_percent": {name: _component_error(value, expected.get(name)) for name, value in components.items()},
        "total_error_percent": error_percent(total, predicted["total_bytes"]),
        "phases": phases,
        "process": process,
    }
    if cap is not None:
        measured["cap"] = dict(cap, headroom_after_bytes=cap["budget_bytes"] - process["peak_reserved_bytes"])
    return {"predicted": dict(predicted), "measured": measured}
