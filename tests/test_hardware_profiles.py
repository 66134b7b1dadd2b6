"""Hardware profiles: the bundled files, how they ship, the schema and its checks, and matching device names."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

import specmemo_plan
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.hardware import (
    HardwareProfile,
    ProbedDevice,
    bundled_profiles_dir,
    list_profiles,
    load_profile,
    match_profile,
    profile_for_device,
    theoretical_bandwidth_gbps,
)
from specmemo_plan.hardware.profiles import _schema

GiB = 2**30
MiB = 2**20
REPO = Path(__file__).resolve().parents[1]

BUNDLED = {
    "titan-rtx", "rtx-3090", "rtx-4090", "rtx-4060-laptop", "t4", "l4", "a10g", "a100-40gb", "a100-80gb",
    "h100-sxm", "h200", "mi250-gcd", "mi300x", "jetson-agx-orin-64gb", "cpu",
}


# ----------------------------------------------------------------------------- bundled profiles and packaging


def test_the_bundled_profiles_are_the_fifteen_devices():
    keys = list_profiles()
    assert set(keys) == BUNDLED and len(keys) == 15
    assert keys == sorted(keys)


def test_profiles_come_from_the_top_level_folder_or_the_installed_package():
    folder = Path(str(bundled_profiles_dir())).resolve()
    checkout, installed = REPO / "profiles", Path(specmemo_plan.__file__).resolve().parent / "profiles"
    assert folder in (checkout, installed)
    assert sorted(p.name for p in folder.glob("*.toml")) == sorted(k + ".toml" for k in BUNDLED)
    assert not (REPO / "specmemo_plan" / "profiles").exists()  # moved, not copied


def _setuptools_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_pyproject_installs_the_folder_as_a_package_with_its_files():
    config = _setuptools_config()
    assert config["package-dir"] == {"specmemo_plan.profiles": "profiles"}
    assert config["package-data"]["specmemo_plan.profiles"] == ["*.toml"]
    assert "specmemo_plan.profiles" in config["packages"]


def test_pyproject_lists_every_package_of_the_checkout():
    # `packages` is a list (package-dir cannot be combined with `find`): a new package must be added to it,
    # or the wheel ships without it while the editable install still works
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("specmemo_plan", "engine")
        for init in (REPO / top).rglob("__init__.py")
    }
    listed = set(_setuptools_config()["packages"]) - {"specmemo_plan.profiles"}
    assert not found - listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
    assert not listed - found, f"remove from [tool.setuptools] packages in pyproject.toml: {sorted(listed - found)}"


@pytest.mark.parametrize("key", sorted(BUNDLED))
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


# ----------------------------------------------------------------------------- the schema and malformed files

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
OPTIONAL = {"unified_memory", "peak_int8_tops", "runtime_overhead_bytes", "notes"}


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


def test_the_schema_is_the_dataclass():
    schema = _schema()
    fields = [f.name for f in dataclasses.fields(HardwareProfile)]
    assert list(schema) == [f for f in fields if f != "key"]  # the key is the file name, not a field
    assert set(schema) == set(VALID)
    assert {name for name, rule in schema.items() if not rule.required} == OPTIONAL
    assert {name for name, rule in schema.items() if rule.positive} == {
        "memory_bytes", "memory_bandwidth_gbps", "peak_fp32_tflops", "peak_fp16_tflops"}
    assert schema["vendor"].choices == ("nvidia", "amd", "cpu") and schema["backend"].choices == ("cuda", "rocm", "cpu")


def test_a_valid_file_loads_by_path(tmp_path):
    p = load_profile(str(_write(tmp_path, VALID)))
    assert p.key == "test-gpu"
    assert p.memory_bytes == 8 * GiB and p.match == ("Test GPU",)
    assert isinstance(p.memory_bandwidth_gbps, float) and isinstance(p.runtime_overhead_bytes, int)
    # optional fields default
    minimal = {k: v for k, v in VALID.items() if k not in OPTIONAL}
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
        ({"name": 3}, "name", "string"),
        ({"name": "  "}, "name", "empty"),
        ({"sources": []}, "sources", "empty"),
        ({"sources": ["the spec sheet"]}, "sources", "URL"),
        ({"vendor": "intel"}, "vendor", "intel"),
        ({"backend": "metal"}, "backend", "metal"),
        ({"backend": "cpu"}, "runtime_overhead_bytes", "must be 0"),
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


def test_missing_fields_are_all_named(tmp_path):
    d = {k: v for k, v in VALID.items() if k not in ("memory_bytes", "sources")}
    with pytest.raises(SpecMemoError) as e:
        load_profile(str(_write(tmp_path, d)))
    assert e.value.message.endswith("missing field 'memory_bytes' (also: sources)")
    assert "HardwareProfile" in e.value.hint


def test_wrong_choice_lists_the_choices(tmp_path):
    with pytest.raises(SpecMemoError) as e:
        load_profile(str(_write(tmp_path, dict(VALID, vendor="intel"))))
    assert e.value.hint == "one of: nvidia, amd, cpu"


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
