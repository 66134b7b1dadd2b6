"""Probing the local machine and `this_device`: CPU only, no GPU library needed.

Fake `pynvml`, `amdsmi` and `torch` modules stand in for the libraries, and a fake /proc and /sys stand in for
the host, so every test knows the exact devices and notes it must get.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import platform
import subprocess
import sys
import types

import pytest

from specmemo_plan.errors import SpecMemoError
from specmemo_plan.hardware import (
    ProbedDevice,
    load_profile,
    match_profile,
    probe,
    procfs,
    probe_devices,
    profile_for_device,
    this_device,
)
from specmemo_plan.plan import DeviceSpec

GiB = 2**30
MiB = 2**20
KiB = 2**10

CPU_DETAILS = {"logical_cores": 8, "usable_cores": 4, "machine": "x86_64"}


@pytest.fixture
def host(monkeypatch):
    """A fake host: 16 GiB of RAM (12 available), an 8-core CPU with 4 usable, no memory limit. Tests change
    `files` (path -> text; a missing path is an unreadable file)."""
    files = {
        "/proc/meminfo": f"MemTotal: {16 * GiB // KiB} kB\nMemFree: {GiB // KiB} kB\nMemAvailable: {12 * GiB // KiB} kB\n",
        "/proc/cpuinfo": "processor\t: 0\nmodel name\t: Test CPU 9000\n",
        "/sys/fs/cgroup/memory.max": "max\n",
    }
    monkeypatch.setattr(procfs, "read_text", files.get)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return files


def _cpu(total=16 * GiB, free=12 * GiB, details=CPU_DETAILS, source="procfs", profile_key=None):
    return ProbedDevice(index=0, backend="cpu", name="Test CPU 9000", total_memory_bytes=total, free_memory_bytes=free,
                        details=dict(details), source=source, profile_key=profile_key)


# ----------------------------------------------------------------------------- the host


def test_module_imports_no_gpu_library_and_not_the_planner():
    code = (
        "import sys, specmemo_plan.hardware as h\n"
        "bad = [m for m in ('torch', 'pynvml', 'amdsmi', 'specmemo_plan.plan') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_from_procfs(host):
    assert probe._probe_cpu() == (_cpu(), [])


@pytest.mark.parametrize("limit_file, usage_file", procfs.CGROUP_FILES)
def test_cpu_memory_is_the_cgroup_limit_when_lower(host, limit_file, usage_file):
    host.pop("/sys/fs/cgroup/memory.max")
    host[limit_file], host[usage_file] = f"{8 * GiB}\n", f"{6 * GiB}\n"
    dev, notes = probe._probe_cpu()
    limited = dict(CPU_DETAILS, meminfo_total_bytes=16 * GiB, cgroup_limit_bytes=8 * GiB)
    assert dev == _cpu(total=8 * GiB, free=2 * GiB, details=limited)  # free: min(available, limit - usage)
    assert notes == ["host RAM limited by the memory cgroup to 8.0 GiB of 16.0 GiB"]


def test_cpu_without_procfs_asks_sysconf(host, monkeypatch):
    host.clear()
    sizes = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 2 * GiB // 4096}
    monkeypatch.setattr(os, "sysconf", sizes.__getitem__)
    monkeypatch.setattr(platform, "processor", lambda: "")
    dev, notes = probe._probe_cpu()
    assert (dev.name, dev.total_memory_bytes, dev.free_memory_bytes, dev.source) == ("x86_64", 2 * GiB, None, "sysconf")
    assert notes == []

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(os, "sysconf", no_sysconf)
    dev, notes = probe._probe_cpu()
    assert dev.total_memory_bytes == 0 and notes == ["host RAM unknown: no /proc/meminfo and no sysconf"]


@pytest.mark.parametrize("cpuinfo, name", [
    ("processor : 0\nBogoMIPS : 108.00\nModel : Raspberry Pi 4 Model B Rev 1.4\n", "Raspberry Pi 4 Model B Rev 1.4"),
    ("Hardware : NVIDIA Jetson AGX Orin\n", "NVIDIA Jetson AGX Orin"),
])
def test_cpu_name_on_arm(host, cpuinfo, name):
    host["/proc/cpuinfo"] = cpuinfo
    assert procfs.cpu_model_name() == name


# ----------------------------------------------------------------------------- fake GPU libraries


class _FakeNVMLError(Exception):
    pass


RTX_3090 = {"name": "NVIDIA GeForce RTX 3090", "total": 24576 * MiB, "free": 24000 * MiB, "bus": 384, "clock": 9751}
QUADRO = {"name": b"NVIDIA Quadro Something", "total": 6 * GiB, "free": 5 * GiB, "bus": 192, "clock": 7000}


def _fake_pynvml(init_error=None, devices=()):
    m = types.ModuleType("pynvml")
    m.NVMLError = _FakeNVMLError
    m.NVML_CLOCK_MEM = 2

    def init():
        print("pynvml chatter")  # must not reach stdout
        os.write(1, b"C-level chatter\n")
        if init_error:
            raise init_error

    m.nvmlInit = init
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: len(devices)
    m.nvmlDeviceGetHandleByIndex = lambda i: devices[i]
    m.nvmlDeviceGetName = lambda h: h["name"]
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=h["total"], free=h["free"], used=h["total"] - h["free"])
    m.nvmlDeviceGetMemoryBusWidth = lambda h: h["bus"]
    m.nvmlDeviceGetMaxClockInfo = lambda h, kind: h["clock"] if kind == 2 else 0
    m.nvmlDeviceGetCudaComputeCapability = lambda h: (8, 6)
    m.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=b"00000000:01:00.0")
    # nvmlDeviceGetMaxPcieLink* left out on purpose: older bindings lack functions; the probe must cope
    return m


def _fake_amdsmi(market_name, total, used):
    m = types.ModuleType("amdsmi")
    m.AmdSmiMemoryType = types.SimpleNamespace(VRAM=0)
    m.AmdSmiClkType = types.SimpleNamespace(MEM=3)
    m.amdsmi_init = lambda: print("amdsmi says hello")
    m.amdsmi_shut_down = lambda: None
    m.amdsmi_get_processor_handles = lambda: ["h0"]
    m.amdsmi_get_gpu_asic_info = lambda h: {"market_name": market_name, "target_graphics_version": "gfx942"}
    m.amdsmi_get_gpu_memory_total = lambda h, kind: total
    m.amdsmi_get_gpu_memory_usage = lambda h, kind: used
    m.amdsmi_get_gpu_vram_info = lambda h: {"vram_bit_width": 8192}
    m.amdsmi_get_clock_info = lambda h, kind: {"clk": 900, "min_clk": 900, "max_clk": 1300}
    m.amdsmi_get_gpu_device_bdf = lambda h: "0000:0c:00.0"
    return m


def _fake_torch(name, total, hip=None, available=True):
    torch = types.ModuleType("torch")
    torch.__version__ = "9.9.9"
    torch.version = types.SimpleNamespace(hip=hip, cuda=None if hip else "12.6")
    props = types.SimpleNamespace(name=name, total_memory=total, multi_processor_count=16, major=8, minor=7,
                                  gcnArchName="gfx90a")
    torch.cuda = types.SimpleNamespace(
        is_available=lambda: available,
        device_count=lambda: 1,
        get_device_properties=lambda i: props,
        mem_get_info=lambda i: (total // 2, total),
    )
    return torch


def _no_torch():
    raise AssertionError("torch must not be consulted when NVML found a GPU")


# ----------------------------------------------------------------------------- the probes


def test_probe_devices_lists_exactly_what_the_libraries_report(host, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(devices=[RTX_3090, QUADRO]))
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # not installed
    monkeypatch.setattr(probe, "_probe_torch", _no_torch)
    devices, notes = probe_devices()
    assert capfd.readouterr().out == ""
    nvml = dict(compute_capability="8.6", pci_bus_id="00000000:01:00.0")
    assert devices == [
        ProbedDevice(index=0, backend="cuda", name="NVIDIA GeForce RTX 3090", total_memory_bytes=24576 * MiB,
                     free_memory_bytes=24000 * MiB, source="nvml", profile_key="rtx-3090",
                     details=dict(memory_bus_width_bits=384, max_memory_clock_mhz=9751, theoretical_bandwidth_gbps=936.1,
                                  **nvml)),
        ProbedDevice(index=1, backend="cuda", name="NVIDIA Quadro Something", total_memory_bytes=6 * GiB,
                     free_memory_bytes=5 * GiB, source="nvml", profile_key=None,
                     details=dict(memory_bus_width_bits=192, max_memory_clock_mhz=7000, theoretical_bandwidth_gbps=336.0,
                                  **nvml)),
        _cpu(profile_key="cpu"),
    ]
    assert notes == ["amdsmi not available: the amdsmi package is not installed",
                     "no bundled profile matches 'NVIDIA Quadro Something' (6.0 GiB)"]
    assert profile_for_device(devices[0]).memory_bytes == 24576 * MiB


def test_cuda_visible_devices_gets_a_note(host, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(devices=[RTX_3090]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    devices, notes = probe._probe_nvml()
    assert notes == ["NVML lists every GPU; CUDA_VISIBLE_DEVICES restricts what torch will use"]


def test_probe_on_this_machine_prints_nothing(capfd):
    # the real libraries, whatever this machine has: stdout stays clean and works again afterwards
    devices, notes = probe_devices()
    assert capfd.readouterr().out == ""
    assert devices[-1].backend == "cpu" and devices[-1].profile_key == "cpu"
    assert all("\n" not in n for n in notes)
    print("after")
    assert capfd.readouterr().out == "after\n"


@pytest.mark.parametrize("exc, said", [
    ("KeyError('amdsmi_status_t')", "KeyError: 'amdsmi_status_t'"),
    ("OSError('libamd_smi.so')", "OSError: libamd_smi.so"),
    ("RuntimeError('boom')", "RuntimeError: boom"),
])
def test_amdsmi_import_failure_is_contained(tmp_path, monkeypatch, capfd, exc, said):
    # what amdsmi does on a machine without ROCm: print (from Python and from C), then raise at import
    pkg = tmp_path / "amdsmi"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import os\n"
        "print('Unable to find libamd_smi.so')\n"
        "os.write(1, b'C-level noise\\n')\n"
        f"raise {exc}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)
    importlib.invalidate_caches()

    devices, notes = probe._probe_amdsmi()
    assert capfd.readouterr().out == ""
    assert devices == []
    # what it printed from Python is quoted; what it wrote to fd 1 from C went to /dev/null
    assert notes == [f"amdsmi not available: {said} (it printed: Unable to find libamd_smi.so)"]

    monkeypatch.setitem(sys.modules, "pynvml", None)
    devices, notes = probe_devices(use_torch=False)
    assert capfd.readouterr().out == ""
    assert [d.backend for d in devices] == ["cpu"]
    assert notes[1].startswith("amdsmi not available: " + said)


def test_nvml_failure_yields_a_note(monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(init_error=_FakeNVMLError("Driver Not Loaded")))
    devices, notes = probe._probe_nvml()
    assert devices == []
    assert notes == ["NVML not available: _FakeNVMLError: Driver Not Loaded (it printed: pynvml chatter)"]
    assert capfd.readouterr().out == ""


def test_nvml_missing_yields_a_note(monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    devices, notes = probe._probe_nvml()
    assert devices == []
    assert notes == ["NVML not available: nvidia-ml-py could not be imported "
                     "(ModuleNotFoundError: import of pynvml halted; None in sys.modules)"]
    assert capfd.readouterr().out == ""


def test_amdsmi_device_is_listed_and_matched(monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "amdsmi", _fake_amdsmi("AMD Instinct MI300X", 192 * GiB, 2 * GiB))
    devices, notes = probe._probe_amdsmi()
    assert capfd.readouterr().out == ""
    assert notes == []
    (d,) = devices
    assert (d.backend, d.source, d.total_memory_bytes, d.free_memory_bytes) == ("rocm", "amdsmi", 192 * GiB, 190 * GiB)
    assert d.details == {"memory_bus_width_bits": 8192, "max_memory_clock_mhz": 1300, "gfx_target": "gfx942",
                         "pci_bus_id": "0000:0c:00.0"}
    assert match_profile(d) == "mi300x"


@pytest.mark.parametrize(
    "name, total, hip, backend, key, detail",
    [
        ("Orin", int(61.4 * GiB), None, "cuda", "jetson-agx-orin-64gb", {"compute_capability": "8.7"}),
        ("AMD Instinct MI250X / MI250", 68_702_699_520, "6.2.4", "rocm", "mi250-gcd", {"gfx_target": "gfx90a"}),
    ],
)
def test_torch_is_the_fallback_probe(host, monkeypatch, capfd, name, total, hip, backend, key, detail):
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(name, total, hip))
    monkeypatch.setattr(probe, "_probe_nvml", lambda: ([], ["NVML not available: test"]))
    monkeypatch.setattr(probe, "_probe_amdsmi", lambda: ([], ["amdsmi not available: test"]))
    devices, notes = probe_devices()
    assert capfd.readouterr().out == ""
    assert notes == ["NVML not available: test", "amdsmi not available: test"]
    gpu = devices[0]
    assert (gpu.backend, gpu.source, gpu.profile_key) == (backend, "torch", key)
    assert gpu.free_memory_bytes == total // 2
    assert gpu.details == dict(multiprocessors=16, **detail)
    prof = profile_for_device(gpu)
    assert prof.key == key and prof.memory_bytes == total
    assert [d.backend for d in probe_devices(use_torch=False)[0]] == ["cpu"]  # use_torch=False: torch not asked


def test_torch_without_a_gpu_gives_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", _fake_torch("x", 0, available=False))
    devices, notes = probe._probe_torch()
    assert devices == [] and notes == ["torch 9.9.9 (CUDA 12.6): no CUDA/ROCm device visible"]


def test_probed_device_is_frozen():
    d = _cpu()
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "y"
    assert hash(d) == hash(_cpu())


# ----------------------------------------------------------------------------- this_device


def _gpu(name, total, index=0, backend="cuda"):
    dev = ProbedDevice(index=index, backend=backend, name=name, total_memory_bytes=total, free_memory_bytes=None,
                       details={}, source="nvml")
    return dataclasses.replace(dev, profile_key=match_profile(dev))


@pytest.fixture
def machine(monkeypatch):
    """Sets what the probe finds: machine(*gpus) -> the calls probe_devices got."""
    calls = []

    def set_devices(*gpus):
        cpu = _cpu(profile_key="cpu")
        monkeypatch.setattr(probe, "probe_devices", lambda **kw: calls.append(kw) or ([*gpus, cpu], []))
        return calls

    return set_devices


def test_a_named_profile_wins_without_probing(machine):
    calls = machine(_gpu("NVIDIA A100-SXM4-40GB", 40 * GiB))
    local = this_device("rtx-3090", count=3)
    rtx = load_profile("rtx-3090")
    assert local.spec == DeviceSpec(kind="cuda", name=rtx.name, total_memory_bytes=rtx.memory_bytes,
                                    profile="rtx-3090", count=3)
    assert (local.profile, local.memory_bytes, local.torch_device) == (rtx, rtx.memory_bytes, None)
    assert calls == []


def test_the_first_gpus_the_smallest_memory(machine):
    calls = machine(_gpu("NVIDIA A100-SXM4-40GB", 40 * GiB), _gpu("NVIDIA A100-PCIE-40GB", 39 * GiB, 1),
                    _gpu("NVIDIA A100-SXM4-40GB", 38 * GiB, 2))
    local = this_device(count=2)
    assert local.spec == DeviceSpec(kind="cuda", name="NVIDIA A100-SXM4-40GB", total_memory_bytes=39 * GiB,
                                    profile="a100-40gb", count=2)
    assert local.memory_bytes == 39 * GiB and local.torch_device == "cuda"
    assert (local.profile.key, local.profile.memory_bytes) == ("a100-40gb", 39 * GiB)
    assert calls == [{"use_torch": False}]
    this_device(use_torch=True)
    assert calls[-1] == {"use_torch": True}


def test_fewer_gpus_than_asked_is_one_line_naming_profile(machine):
    machine(_gpu("NVIDIA A100-SXM4-40GB", 40 * GiB), _gpu("NVIDIA A100-SXM4-40GB", 40 * GiB, 1))
    with pytest.raises(SpecMemoError) as e:
        this_device(count=3)
    assert e.value.message == "--devices 3 needs 3 GPUs; this machine shows 2"
    assert "--profile" in e.value.hint and "\n" not in str(e.value)


def test_no_gpu_is_the_cpu(machine):
    machine()
    local = this_device()
    assert local.spec == DeviceSpec(kind="cpu", name="Test CPU 9000", total_memory_bytes=16 * GiB, profile="cpu")
    assert local.profile.memory_bytes == 16 * GiB and local.torch_device == "cpu"
    with pytest.raises(SpecMemoError, match="needs 2 GPUs; this machine shows 0"):
        this_device(count=2)


def test_an_unmatched_gpu_has_no_profile(machine):
    machine(_gpu("Some Future GPU", 24 * GiB))
    local = this_device()
    assert local.profile is None and local.spec.profile is None and local.spec.name == "Some Future GPU"


def test_torch_device_picks_the_device_of_that_kind(machine):
    machine(_gpu("NVIDIA GeForce RTX 3090", 24576 * MiB), _gpu("NVIDIA GeForce RTX 4090", 24564 * MiB, 1))
    cpu = this_device(torch_device="cpu")
    assert (cpu.spec.kind, cpu.spec.name, cpu.torch_device) == ("cpu", "Test CPU 9000", "cpu")
    assert this_device(torch_device="cuda").spec.profile == "rtx-3090"
    second = this_device(torch_device="cuda:1")
    assert (second.spec.profile, second.torch_device) == ("rtx-4090", "cuda:1")
    with pytest.raises(SpecMemoError, match="'cuda:2' asked for, but the probe finds 2 GPUs"):
        this_device(torch_device="cuda:2")
    with pytest.raises(SpecMemoError, match="unknown torch device 'mps'"):
        this_device(torch_device="mps")
    with pytest.raises(ValueError):
        this_device(torch_device="cuda", count=2)


def test_torch_device_follows_the_torch_build(machine, monkeypatch):
    machine(_gpu("NVIDIA GeForce RTX 3090", 24576 * MiB), _gpu("AMD Instinct MI300X", 192 * GiB, 0, "rocm"))
    monkeypatch.setitem(sys.modules, "torch", _fake_torch("x", 0, hip="6.2.4"))
    assert this_device(torch_device="cuda").spec == DeviceSpec(kind="rocm", name="AMD Instinct MI300X",
                                                               total_memory_bytes=192 * GiB, profile="mi300x")
    machine()
    with pytest.raises(SpecMemoError, match="finds 0 GPUs"):
        this_device(torch_device="cuda")


def test_cpu_flags_and_the_demo_dtype(host, monkeypatch):
    """The demo runs bf16 where the CPU has bf16 dot products (engine.commands.demo_dtype), else fp32."""
    import torch

    from engine.commands import demo_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert procfs.cpu_flags() == set() and demo_dtype(None) == "fp32"
    host["/proc/cpuinfo"] += "flags\t\t: fpu sse2 avx512f avx512_bf16\n"
    assert procfs.cpu_flags() == {"fpu", "sse2", "avx512f", "avx512_bf16"} and demo_dtype("cpu") == "bf16"
    host["/proc/cpuinfo"] = "processor\t: 0\nFeatures\t: fp asimd bf16\n"  # Arm names it bf16, not avx512_bf16
    assert "bf16" in procfs.cpu_flags() and demo_dtype("cpu") == "fp32"
    host.pop("/proc/cpuinfo")
    assert procfs.cpu_flags() == set()
