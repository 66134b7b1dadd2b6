"""Hardware profiles and local probing: CPU only, no GPU library needed (fakes stand in for NVML/amdsmi/torch)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from specmemo_plan import hardware
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.hardware import (
    HardwareProfile,
    ProbedDevice,
    list_profiles,
    load_profile,
    match_profile,
    probe_devices,
    profile_for_device,
    theoretical_bandwidth_gbps,
)

GiB = 2**30
MiB = 2**20

REQUIRED = [
    "titan-rtx",
    "rtx-3090",
    "rtx-4090",
    "rtx-4060-laptop",
    "t4",
    "l4",
    "a10g",
    "a100-40gb",
    "a100-80gb",
    "h100-sxm",
    "h200",
    "mi250-gcd",
    "mi300x",
    "jetson-agx-orin-64gb",
    "cpu",
]


# ----------------------------------------------------------------------------- bundled profiles


def test_required_devices_are_bundled():
    keys = list_profiles()
    assert len(keys) >= 14
    assert set(REQUIRED) <= set(keys)
    assert keys == sorted(keys)


@pytest.mark.parametrize("key", list_profiles())
def test_every_profile_loads_with_sources(key):
    p = load_profile(key)
    assert isinstance(p, HardwareProfile)
    assert p.key == key
    assert p.sources and all(s.startswith(("https://", "http://")) for s in p.sources)
    assert p.notes.strip()
    assert p.memory_bytes > 0 and isinstance(p.memory_bytes, int)
    assert p.memory_bandwidth_gbps > 0
    assert p.peak_fp32_tflops > 0 and p.peak_fp16_tflops > 0
    assert p.peak_bf16_tflops >= 0 and p.peak_int8_tops >= 0
    assert p.interconnect_bandwidth_gbps > 0
    assert p.vendor in ("nvidia", "amd", "cpu") and p.backend in ("cuda", "rocm", "cpu")
    assert p.runtime_overhead_bytes >= 0
    if p.backend == "cpu":
        assert p.runtime_overhead_bytes == 0
    else:
        assert p.match, "a GPU profile needs match patterns for the probe"


def test_profiles_ship_as_package_data():
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"profiles/*.toml"' in pyproject
    files = importlib.resources.files("specmemo_plan").joinpath("profiles")
    assert sorted(p.name for p in files.iterdir() if p.name.endswith(".toml")) == [k + ".toml" for k in list_profiles()]


def test_spec_numbers_spot_checks():
    # copied by hand from the spec sheets cited in the files
    assert load_profile("rtx-3090").memory_bandwidth_gbps == 936.0
    assert load_profile("rtx-3090").peak_fp16_tflops == 71.0  # FP32 accumulate (GeForce half rate)
    assert load_profile("h100-sxm").memory_bandwidth_gbps == 3350.0
    assert load_profile("h200").memory_bandwidth_gbps == 4800.0
    assert load_profile("mi300x").peak_fp16_tflops == 1307.4
    assert load_profile("a100-80gb").memory_bandwidth_gbps == 2039.0
    # memory as nvidia-smi reports it
    assert load_profile("t4").memory_bytes == 15360 * MiB
    assert load_profile("h100-sxm").memory_bytes == 81559 * MiB
    assert load_profile("rtx-4060-laptop").memory_bytes == 8188 * MiB
    # MI250 as ROCm exposes it: one GCD, half the package
    gcd = load_profile("mi250-gcd")
    assert gcd.memory_bytes == 64 * GiB
    assert gcd.memory_bandwidth_gbps == pytest.approx(3276.8 / 2)
    assert gcd.peak_fp16_tflops == pytest.approx(362.1 / 2, abs=0.1)
    # unified memory and no-bf16 chips
    assert load_profile("jetson-agx-orin-64gb").unified_memory
    assert load_profile("cpu").unified_memory and load_profile("cpu").backend == "cpu"
    assert load_profile("titan-rtx").peak_bf16_tflops == 0.0
    assert load_profile("t4").peak_bf16_tflops == 0.0


def test_theoretical_bandwidth_reproduces_the_sheets():
    # bus bits / 8 * NVML max memory clock (MHz) * 2 transfers per clock
    assert theoretical_bandwidth_gbps(384, 9751) == pytest.approx(936.1, abs=0.1)
    assert theoretical_bandwidth_gbps(5120, 1215) == pytest.approx(1555.2, abs=0.1)
    assert theoretical_bandwidth_gbps(5120, 2619) == pytest.approx(3352.3, abs=0.1)
    assert theoretical_bandwidth_gbps(256, 5001) == pytest.approx(320.1, abs=0.1)
    assert theoretical_bandwidth_gbps(384, 7001) == pytest.approx(load_profile("titan-rtx").memory_bandwidth_gbps, rel=0.01)
    assert theoretical_bandwidth_gbps(128, 4000, data_rate=4) == pytest.approx(256.0)
    with pytest.raises(ValueError):
        theoretical_bandwidth_gbps(0, 1000)


# ----------------------------------------------------------------------------- peak_tflops


def test_peak_tflops_by_dtype():
    p = load_profile("rtx-4090")
    assert p.peak_tflops("fp32") == 82.6
    assert p.peak_tflops("float16") == p.peak_tflops("fp16") == 165.2
    assert p.peak_tflops("bfloat16") == 165.2
    assert p.peak_tflops("int8") == 660.6
    # weight-only formats compute in fp16
    assert p.peak_tflops("int4") == p.peak_tflops("fp8") == 165.2
    # no int8 claimed: fp16 rate
    assert load_profile("cpu").peak_tflops("int8") == load_profile("cpu").peak_fp16_tflops


def test_bf16_on_a_chip_without_it_says_so():
    with pytest.raises(SpecMemoError) as e:
        load_profile("t4").peak_tflops("bf16")
    assert "bf16" in e.value.message and "fp16" in (e.value.hint or "")


def test_unknown_dtype():
    with pytest.raises(SpecMemoError) as e:
        load_profile("l4").peak_tflops("fp13")
    assert "fp13" in e.value.message


# ----------------------------------------------------------------------------- malformed profiles

VALID = {
    "name": "Test GPU",
    "vendor": "nvidia",
    "backend": "cuda",
    "memory_bytes": 8 * GiB,
    "unified_memory": False,
    "memory_bandwidth_gbps": 256.0,
    "peak_fp32_tflops": 10.0,
    "peak_fp16_tflops": 40.0,
    "peak_bf16_tflops": 40.0,
    "peak_int8_tops": 80.0,
    "interconnect": "PCIe 4.0 x8",
    "interconnect_bandwidth_gbps": 15.75,
    "runtime_overhead_bytes": 512 * MiB,
    "match": ["Test GPU"],
    "sources": ["https://example.com/spec"],
    "notes": "made up",
}


def _toml(d: dict) -> str:
    lines = []
    for k, v in d.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v!r}")
        else:  # str or list of str: JSON strings are TOML basic strings
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def _write(tmp_path, d: dict, name="test-gpu.toml") -> Path:
    path = tmp_path / name
    path.write_text(_toml(d))
    return path


def test_a_valid_file_loads_by_path(tmp_path):
    p = load_profile(str(_write(tmp_path, VALID)))
    assert p.key == "test-gpu"
    assert p.memory_bytes == 8 * GiB and p.match == ("Test GPU",)
    # optional fields default
    minimal = {k: v for k, v in VALID.items() if k not in ("unified_memory", "peak_int8_tops", "runtime_overhead_bytes", "notes")}
    q = load_profile(str(_write(tmp_path, minimal, "minimal.toml")))
    assert (q.peak_int8_tops, q.unified_memory, q.runtime_overhead_bytes, q.notes) == (0.0, False, 0, "")


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"memory_bytes": None}, "memory_bytes", "missing"),
        ({"sources": None}, "sources", "missing"),
        ({"memory_bytes": "24GB"}, "memory_bytes", "number"),
        ({"memory_bytes": 1.5e9}, "memory_bytes", "integer"),
        ({"memory_bytes": -1}, "memory_bytes", "positive"),
        ({"memory_bandwidth_gbps": 0.0}, "memory_bandwidth_gbps", "positive"),
        ({"peak_bf16_tflops": -1.0}, "peak_bf16_tflops", "negative"),
        ({"runtime_overhead_bytes": -5}, "runtime_overhead_bytes", "negative"),
        ({"peak_fp16_tflops": True}, "peak_fp16_tflops", "number"),
        ({"unified_memory": "yes"}, "unified_memory", "true or false"),
        ({"match": "Test GPU"}, "match", "list"),
        ({"sources": []}, "sources", "empty"),
        ({"sources": ["the spec sheet"]}, "sources", "URL"),
        ({"vendor": "intel"}, "vendor", "intel"),
        ({"backend": "metal"}, "backend", "metal"),
        ({"memory_byte": 5}, "memory_byte", "unknown field"),
    ],
)
def test_malformed_profile_names_file_and_field(tmp_path, change, field, words):
    d = dict(VALID)
    for k, v in change.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    path = _write(tmp_path, d)
    with pytest.raises(SpecMemoError) as e:
        load_profile(str(path))
    msg = e.value.message
    assert str(path) in msg
    assert f"'{field}'" in msg
    assert words in msg + " " + (e.value.hint or "")


def test_unknown_field_suggests_the_right_one(tmp_path):
    d = dict(VALID)
    d["memory_byte"] = d.pop("memory_bytes")
    with pytest.raises(SpecMemoError) as e:
        load_profile(str(_write(tmp_path, d)))
    assert "memory_bytes" in (e.value.hint or "")


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\nmemory_bytes = = 5\n')
    with pytest.raises(SpecMemoError) as e:
        load_profile(str(path))
    assert str(path) in e.value.message and "TOML" in e.value.message and "line 2" in e.value.message


def test_missing_file(tmp_path):
    with pytest.raises(SpecMemoError) as e:
        load_profile(str(tmp_path / "nope.toml"))
    assert "not found" in e.value.message


# ----------------------------------------------------------------------------- names and matching


@pytest.mark.parametrize("name, close", [("rtx-3080", "rtx-3090"), ("h100", "h100-sxm"), ("mi300", "mi300x")])
def test_unknown_profile_lists_close_names(name, close):
    with pytest.raises(SpecMemoError) as e:
        load_profile(name)
    assert name in e.value.message
    assert close in (e.value.hint or "")


def test_profile_by_key_variants_and_by_device_name():
    assert load_profile("RTX_3090").key == "rtx-3090"
    assert load_profile("NVIDIA GeForce RTX 3090").key == "rtx-3090"
    assert load_profile("Tesla T4").key == "t4"
    with pytest.raises(SpecMemoError) as e:
        load_profile("A100")  # both A100 profiles take it: ambiguous
    assert "a100-40gb" in e.value.message and "a100-80gb" in e.value.message


def _dev(name, total_bytes, backend="cuda", source="nvml"):
    return ProbedDevice(index=0, backend=backend, name=name, total_memory_bytes=int(total_bytes),
                        free_memory_bytes=None, details={}, source=source)


@pytest.mark.parametrize(
    "name, total, backend, expected",
    [
        ("NVIDIA TITAN RTX", 24220 * MiB, "cuda", "titan-rtx"),
        ("TITAN RTX", 24220 * MiB, "cuda", "titan-rtx"),
        ("NVIDIA GeForce RTX 3090", 24576 * MiB, "cuda", "rtx-3090"),
        ("NVIDIA GeForce RTX 3090 Ti", 24564 * MiB, "cuda", None),
        ("NVIDIA GeForce RTX 4090", 24564 * MiB, "cuda", "rtx-4090"),
        ("NVIDIA GeForce RTX 4090 D", 24564 * MiB, "cuda", None),
        ("NVIDIA GeForce RTX 4090 Laptop GPU", 16376 * MiB, "cuda", None),
        ("NVIDIA GeForce RTX 4060 Laptop GPU", 8188 * MiB, "cuda", "rtx-4060-laptop"),
        ("NVIDIA GeForce RTX 4060", 8188 * MiB, "cuda", None),
        ("Tesla T4", 15360 * MiB, "cuda", "t4"),
        ("NVIDIA T400", 2 * GiB, "cuda", None),
        ("NVIDIA L4", 23034 * MiB, "cuda", "l4"),
        ("NVIDIA L40S", 46068 * MiB, "cuda", None),
        ("NVIDIA A10G", 23028 * MiB, "cuda", "a10g"),
        ("NVIDIA A10", 23028 * MiB, "cuda", None),
        ("NVIDIA A100-SXM4-40GB", 40960 * MiB, "cuda", "a100-40gb"),
        ("NVIDIA A100-PCIE-40GB", 40960 * MiB, "cuda", "a100-40gb"),
        ("NVIDIA A100-SXM4-80GB", 85_056_798_720, "cuda", "a100-80gb"),  # torch's total
        ("NVIDIA A100 80GB PCIe", 81920 * MiB, "cuda", "a100-80gb"),
        ("NVIDIA H100 80GB HBM3", 81559 * MiB, "cuda", "h100-sxm"),
        ("NVIDIA H800", 81559 * MiB, "cuda", None),
        ("NVIDIA H200", 143771 * MiB, "cuda", "h200"),
        ("AMD Instinct MI250X / MI250", 68_702_699_520, "rocm", "mi250-gcd"),
        ("AMD Instinct MI300X", 192 * GiB, "rocm", "mi300x"),
        ("AMD Instinct MI300X", 192 * GiB, "cuda", None),  # backend must agree
        ("Orin", 61.4 * GiB, "cuda", "jetson-agx-orin-64gb"),
        ("Orin", 30 * GiB, "cuda", None),  # the 32 GB module: no profile
        ("Some Future GPU", 24 * GiB, "cuda", None),
    ],
)
def test_match_profile(name, total, backend, expected):
    assert match_profile(_dev(name, total, backend)) == expected


def test_match_without_known_memory_uses_the_name_alone():
    assert match_profile(_dev("NVIDIA GeForce RTX 3090", 0)) == "rtx-3090"


def test_profile_for_device_takes_the_probed_memory():
    cpu = ProbedDevice(index=0, backend="cpu", name="Some CPU", total_memory_bytes=12 * GiB,
                       free_memory_bytes=10 * GiB, details={}, source="procfs")
    assert match_profile(cpu) == "cpu"
    p = profile_for_device(cpu)
    assert p.key == "cpu" and p.memory_bytes == 12 * GiB
    assert p.memory_bandwidth_gbps == load_profile("cpu").memory_bandwidth_gbps
    g = profile_for_device(_dev("NVIDIA GeForce RTX 3090", 24_000 * MiB))
    assert g.key == "rtx-3090" and g.memory_bytes == 24_000 * MiB
    with pytest.raises(SpecMemoError) as e:
        profile_for_device(_dev("Some Future GPU", 24 * GiB))
    assert "Some Future GPU" in e.value.message


# ----------------------------------------------------------------------------- probing


def test_module_imports_no_gpu_library():
    code = (
        "import sys, specmemo_plan.hardware as h\n"
        "bad = [m for m in ('torch', 'pynvml', 'amdsmi') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_probe_on_this_machine_returns_the_cpu_and_prints_nothing(capfd):
    devices, notes = probe_devices()
    out, _ = capfd.readouterr()
    assert out == ""
    cpus = [d for d in devices if d.backend == "cpu"]
    assert len(cpus) == 1
    cpu = cpus[0]
    assert cpu.total_memory_bytes > 0 and cpu.source in ("procfs", "sysconf")
    assert cpu.details["logical_cores"] >= 1
    assert cpu.profile_key == "cpu"
    assert devices[-1] is cpu  # GPUs first
    assert all(isinstance(n, str) and "\n" not in n for n in notes)
    # stdout works again afterwards
    print("after")
    assert capfd.readouterr().out == "after\n"


def test_cpu_probe_reads_meminfo():
    if not Path("/proc/meminfo").exists():
        pytest.skip("no procfs")
    dev, _ = hardware._probe_cpu()
    memtotal = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))
    assert dev.total_memory_bytes <= memtotal
    assert dev.total_memory_bytes == memtotal or "cgroup_limit_bytes" in dev.details
    assert dev.free_memory_bytes is not None and 0 <= dev.free_memory_bytes <= dev.total_memory_bytes


@pytest.mark.parametrize("exc", ["KeyError('amdsmi_status_t')", "OSError('libamd_smi.so')", "RuntimeError('boom')"])
def test_amdsmi_import_failure_is_contained(tmp_path, monkeypatch, capfd, exc):
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

    devices, notes = hardware._probe_amdsmi()
    out, _ = capfd.readouterr()
    assert out == ""
    assert devices == []
    assert len(notes) == 1 and notes[0].startswith("amdsmi not available")
    assert exc.split("(")[0] in notes[0]
    assert "Unable to find libamd_smi.so" in notes[0]  # what it printed is quoted in the note

    devices, notes = probe_devices(use_torch=False)
    out, _ = capfd.readouterr()
    assert out == ""
    assert [d.backend for d in devices][-1] == "cpu"
    assert any(n.startswith("amdsmi not available") for n in notes)


class _FakeNVMLError(Exception):
    pass


def _fake_pynvml(init_error=None, devices=()):
    m = types.ModuleType("pynvml")
    m.NVMLError = _FakeNVMLError
    m.NVML_CLOCK_MEM = 2

    def init():
        print("pynvml chatter")  # must not reach stdout
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


def test_nvml_failure_yields_a_note(monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(init_error=_FakeNVMLError("Driver Not Loaded")))
    devices, notes = hardware._probe_nvml()
    assert devices == []
    assert notes == ["NVML not available: _FakeNVMLError: Driver Not Loaded (it printed: pynvml chatter)"]
    assert capfd.readouterr().out == ""


def test_nvml_missing_yields_a_note(monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    devices, notes = hardware._probe_nvml()
    assert devices == [] and len(notes) == 1 and notes[0].startswith("NVML not available")
    assert capfd.readouterr().out == ""


def test_nvml_device_is_listed_and_matched(monkeypatch, capfd):
    rtx = {"name": "NVIDIA GeForce RTX 3090", "total": 24576 * MiB, "free": 24000 * MiB, "bus": 384, "clock": 9751}
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(devices=[rtx]))
    monkeypatch.setattr(hardware, "_probe_amdsmi", lambda: ([], ["amdsmi not available: test"]))

    def no_torch():
        raise AssertionError("torch must not be consulted when NVML found a GPU")

    monkeypatch.setattr(hardware, "_probe_torch", no_torch)
    devices, notes = probe_devices()
    assert capfd.readouterr().out == ""
    gpu, cpu = devices
    assert (gpu.backend, gpu.source, gpu.name, gpu.profile_key) == ("cuda", "nvml", "NVIDIA GeForce RTX 3090", "rtx-3090")
    assert gpu.total_memory_bytes == 24576 * MiB and gpu.free_memory_bytes == 24000 * MiB
    assert gpu.details["memory_bus_width_bits"] == 384 and gpu.details["max_memory_clock_mhz"] == 9751
    assert gpu.details["theoretical_bandwidth_gbps"] == pytest.approx(936.1, abs=0.1)
    assert gpu.details["compute_capability"] == "8.6" and gpu.details["pci_bus_id"] == "00000000:01:00.0"
    assert "max_pcie_link" not in gpu.details
    assert cpu.backend == "cpu"
    assert profile_for_device(gpu).memory_bytes == 24576 * MiB
    assert notes[0] == "amdsmi not available: test"


def _fake_amdsmi(market_name, total, used):
    m = types.ModuleType("amdsmi")
    m.AmdSmiMemoryType = types.SimpleNamespace(VRAM=0)
    m.AmdSmiClkType = types.SimpleNamespace(MEM=3)

    def init():
        print("amdsmi says hello")

    m.amdsmi_init = init
    m.amdsmi_shut_down = lambda: None
    m.amdsmi_get_processor_handles = lambda: ["h0"]
    m.amdsmi_get_gpu_asic_info = lambda h: {"market_name": market_name, "target_graphics_version": "gfx942"}
    m.amdsmi_get_gpu_memory_total = lambda h, kind: total
    m.amdsmi_get_gpu_memory_usage = lambda h, kind: used
    m.amdsmi_get_gpu_vram_info = lambda h: {"vram_bit_width": 8192}
    m.amdsmi_get_clock_info = lambda h, kind: {"clk": 900, "min_clk": 900, "max_clk": 1300}
    m.amdsmi_get_gpu_device_bdf = lambda h: "0000:0c:00.0"
    return m


def test_amdsmi_device_is_listed_and_matched(monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "amdsmi", _fake_amdsmi("AMD Instinct MI300X", 192 * GiB, 2 * GiB))
    devices, notes = hardware._probe_amdsmi()
    assert capfd.readouterr().out == ""
    assert notes == []
    (d,) = devices
    assert (d.backend, d.source, d.total_memory_bytes, d.free_memory_bytes) == ("rocm", "amdsmi", 192 * GiB, 190 * GiB)
    assert d.details == {"memory_bus_width_bits": 8192, "max_memory_clock_mhz": 1300, "gfx_target": "gfx942",
                         "pci_bus_id": "0000:0c:00.0"}
    assert match_profile(d) == "mi300x"


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


@pytest.mark.parametrize(
    "name, total, hip, backend, key, detail",
    [
        ("Orin", int(61.4 * GiB), None, "cuda", "jetson-agx-orin-64gb", {"compute_capability": "8.7"}),
        ("AMD Instinct MI250X / MI250", 68_702_699_520, "6.2.4", "rocm", "mi250-gcd", {"gfx_target": "gfx90a"}),
    ],
)
def test_torch_is_the_fallback_probe(monkeypatch, capfd, name, total, hip, backend, key, detail):
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(name, total, hip))
    monkeypatch.setattr(hardware, "_probe_nvml", lambda: ([], ["NVML not available: test"]))
    monkeypatch.setattr(hardware, "_probe_amdsmi", lambda: ([], ["amdsmi not available: test"]))
    devices, notes = probe_devices()
    assert capfd.readouterr().out == ""
    gpu = devices[0]
    assert (gpu.backend, gpu.source, gpu.profile_key) == (backend, "torch", key)
    assert gpu.free_memory_bytes == total // 2
    for k, v in detail.items():
        assert gpu.details[k] == v
    prof = profile_for_device(gpu)
    assert prof.key == key and prof.memory_bytes == total


def test_torch_without_a_gpu_gives_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", _fake_torch("x", 0, available=False))
    devices, notes = hardware._probe_torch()
    assert devices == [] and notes == ["torch 9.9.9 (CUDA 12.6): no CUDA/ROCm device visible"]


def test_unmatched_gpu_gets_a_note(monkeypatch):
    odd = {"name": "NVIDIA Quadro Something", "total": 6 * GiB, "free": 6 * GiB, "bus": 192, "clock": 7000}
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(devices=[odd]))
    monkeypatch.setattr(hardware, "_probe_amdsmi", lambda: ([], []))
    devices, notes = probe_devices()
    assert devices[0].profile_key is None
    assert any("no bundled profile matches 'NVIDIA Quadro Something'" in n for n in notes)


def test_probed_device_is_frozen():
    d = _dev("x", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "y"
    assert hash(d) == hash(_dev("x", 1))
