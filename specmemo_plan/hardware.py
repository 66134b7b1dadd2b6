"""Hardware profiles (what a device can do, from its spec sheet) and probing the local machine.

Profiles are TOML files in `specmemo_plan/profiles/`, one per device, shipped in the wheel. Their conventions,
which every file follows and states in its `notes`:

- `memory_bytes`: total device memory as the driver reports it (nvidia-smi / NVML `memory.total`, checked
  against public nvidia-smi logs where a file says so), not the marketing capacity: a T4 "16 GB" shows 15360 MiB.
  For unified-memory devices (Jetson, CPU) it is the nominal RAM; `profile_for_device` replaces it with what the
  probe saw.
- Flops are dense (no 2:4 sparsity) peaks. Tensor-core fp16/bf16 figures are with FP32 accumulate, which is what
  cuBLAS and PyTorch use for fp16 GEMM (GeForce cards run it at half the FP16-accumulate rate). `peak_bf16_tflops`
  is 0.0 on chips without bf16; `peak_int8_tops` is 0.0 where none is claimed.
- `interconnect_bandwidth_gbps` is the host link (what offloading weights or KV to the host goes through), per
  direction, in GB/s (10^9 B/s); peer links (NVLink, Infinity Fabric) are named in `interconnect`.
- `runtime_overhead_bytes` is the memory the runtime holds outside tensors (CUDA/HIP context, library workspaces,
  caching-allocator slack): a typical value, with its basis in `notes`; 0 on the CPU.

Probing never writes to stdout (stdout is for the command's data): NVIDIA through NVML (`nvidia-ml-py`), AMD
through `amdsmi` (whose import raises KeyError and prints to stdout on machines without ROCm; both contained),
torch's CUDA/ROCm view when neither library found a GPU, and always the CPU. A missing library or driver gives
a one-line note, never an exception.

No torch, pynvml or amdsmi import at module level: each is imported inside the function that needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.resources
import importlib.util
import io
import math
import os
import platform
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SpecMemoError, close_names

PROFILES_PACKAGE = "specmemo_plan"
PROFILES_DIR = "profiles"

VENDORS = ("nvidia", "amd", "cpu")
BACKENDS = ("cuda", "rocm", "cpu")

# A probed device matches a profile only if its total memory is within this fraction of the profile's
# memory_bytes: keeps a 16 GB "RTX 4090 Laptop GPU" off the 24 GB card, a 32 GB Orin off the 64 GB profile,
# and chooses between the A100 40GB and 80GB profiles. Driver totals differ from one driver to the next by
# well under 5%.
MEMORY_MATCH_TOLERANCE = 0.12

# Words that, right after a match pattern in a device name, make it another product: "RTX 3090 Ti",
# "RTX 4090 D", "RTX 4090 Laptop GPU". A pattern that itself contains the word still matches.
VARIANT_WORDS = ("ti", "super", "laptop", "mobile", "max-q", "d")


@dataclass(frozen=True)
class HardwareProfile:
    """One device's spec-sheet numbers (a TOML file in profiles/). Units are in the field names."""

    key: str  # file stem, e.g. "rtx-3090"; what `load_profile` takes
    name: str  # display name
    vendor: str  # "nvidia" | "amd" | "cpu"
    backend: str  # "cuda" | "rocm" | "cpu": the torch device kind that runs on it
    memory_bytes: int  # total device memory as the driver reports it (see the module docstring)
    memory_bandwidth_gbps: float  # peak memory bandwidth, GB/s (10^9 B/s), spec sheet
    peak_fp32_tflops: float  # dense fp32 (non-tensor on NVIDIA, vector on AMD)
    peak_fp16_tflops: float  # dense fp16, tensor/matrix cores where present, FP32 accumulate
    peak_bf16_tflops: float  # dense bf16; 0.0 = the chip has no bf16
    interconnect: str  # host link, and peer links where present, in words
    interconnect_bandwidth_gbps: float  # host link, per direction, GB/s
    match: tuple[str, ...]  # substrings (whole words, case-insensitive) of probed device names this profile takes
    sources: tuple[str, ...]  # public spec pages the numbers come from (which number from which: notes)
    peak_int8_tops: float = 0.0  # dense int8 tensor/matrix; 0.0 = none claimed
    unified_memory: bool = False  # memory shared with the host (Jetson, CPU)
    runtime_overhead_bytes: int = 0  # runtime's memory outside tensors (context, workspaces, slack); 0 on cpu
    notes: str = ""  # assumptions and which source gives which number

    def peak_tflops(self, dtype: str) -> float:
        """Peak dense throughput, in TFLOPS (TOPS for int8), for computing in `dtype`.

        - "fp32", "fp16", "bf16": their fields. bf16 on a chip without it (0.0: Turing, the T4) is an error,
          not a silent fallback: the engine could not run bf16 there either.
        - "int8": `peak_int8_tops` (int8 tensor/matrix math, W8A8); on a chip that claims none, the fp16 peak.
        - "int4", "fp8", "nf4" and other weight-only formats: the fp16 peak, since weight-only quantisation
          dequantises to fp16 and computes in fp16 (the bytes moved shrink, the math does not).
        """
        d = dtype.strip().lower()
        d = _DTYPE_ALIASES.get(d, d)
        if d == "fp32":
            return self.peak_fp32_tflops
        if d == "fp16":
            return self.peak_fp16_tflops
        if d == "bf16":
            if self.peak_bf16_tflops <= 0:
                raise SpecMemoError(
                    f"{self.name} has no bf16 support (profile '{self.key}')",
                    "use --dtype fp16 on this device",
                )
            return self.peak_bf16_tflops
        if d == "int8":
            return self.peak_int8_tops if self.peak_int8_tops > 0 else self.peak_fp16_tflops
        if d in _WEIGHT_ONLY_DTYPES:
            return self.peak_fp16_tflops
        known = sorted({"fp32", "fp16", "bf16", "int8", *_WEIGHT_ONLY_DTYPES})
        raise SpecMemoError(f"unknown dtype '{dtype}' for peak throughput", close_names(d, known))


_DTYPE_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
}
_WEIGHT_ONLY_DTYPES = ("int4", "fp8", "nf4", "q4", "q8")


# ----------------------------------------------------------------------------- loading profiles

# field -> (accepted Python types after TOML parsing, required)
_INT = "int"
_FLOAT = "float"
_STR = "str"
_BOOL = "bool"
_STRLIST = "list[str]"
_FIELDS: dict[str, tuple[str, bool]] = {
    "name": (_STR, True),
    "vendor": (_STR, True),
    "backend": (_STR, True),
    "memory_bytes": (_INT, True),
    "unified_memory": (_BOOL, False),
    "memory_bandwidth_gbps": (_FLOAT, True),
    "peak_fp32_tflops": (_FLOAT, True),
    "peak_fp16_tflops": (_FLOAT, True),
    "peak_bf16_tflops": (_FLOAT, True),
    "peak_int8_tops": (_FLOAT, False),
    "interconnect": (_STR, True),
    "interconnect_bandwidth_gbps": (_FLOAT, True),
    "runtime_overhead_bytes": (_INT, False),
    "match": (_STRLIST, True),
    "sources": (_STRLIST, True),
    "notes": (_STR, False),
}
# Fields that must be > 0; every other number must be >= 0.
_POSITIVE = ("memory_bytes", "memory_bandwidth_gbps", "peak_fp32_tflops", "peak_fp16_tflops")


def _profiles_dir():
    return importlib.resources.files(PROFILES_PACKAGE).joinpath(PROFILES_DIR)


def list_profiles() -> list[str]:
    """Keys (file stems) of the bundled profiles, sorted."""
    return sorted(p.name[: -len(".toml")] for p in _profiles_dir().iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str) -> HardwareProfile:
    """A bundled profile by key ("rtx-3090"), by a device name one profile matches ("NVIDIA GeForce RTX 3090"),
    or a TOML file by path (anything ending in .toml or containing a path separator)."""
    text = str(name_or_path).strip()
    if text.endswith(".toml") or "/" in text or os.sep in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise SpecMemoError(f"hardware profile file not found: {path}", "give a bundled name or an existing .toml")
        return _parse_profile(path.read_bytes(), key=path.stem, origin=str(path))
    keys = list_profiles()
    key = text.lower().replace("_", "-").replace(" ", "-")
    if key in keys:
        return _load_bundled(key)
    by_name = _keys_matching_name(text)
    if len(by_name) == 1:
        return _load_bundled(by_name[0])
    if len(by_name) > 1:
        raise SpecMemoError(f"'{text}' matches several hardware profiles: {', '.join(by_name)}", "name one of them")
    raise SpecMemoError(f"unknown hardware profile '{text}'", close_names(key, keys))


def load_all_profiles() -> dict[str, HardwareProfile]:
    """Every bundled profile, by key."""
    return {key: _load_bundled(key) for key in list_profiles()}


@functools.lru_cache(maxsize=None)
def _load_bundled(key: str) -> HardwareProfile:
    resource = _profiles_dir().joinpath(f"{key}.toml")
    return _parse_profile(resource.read_bytes(), key=key, origin=f"{PROFILES_DIR}/{key}.toml")


def _parse_profile(data: bytes, key: str, origin: str) -> HardwareProfile:
    """Validate one TOML profile; every problem names the file and the field."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SpecMemoError(f"{origin}: not UTF-8 text ({e})", "save the profile as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecMemoError(f"{origin}: not valid TOML: {e}", "fix the TOML syntax at that line") from None

    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        bad = unknown[0]
        raise SpecMemoError(f"{origin}: unknown field '{bad}'", close_names(bad, _FIELDS))
    missing = [f for f, (_, required) in _FIELDS.items() if required and f not in raw]
    if missing:
        raise SpecMemoError(
            f"{origin}: missing field '{missing[0]}'" + (f" (also: {', '.join(missing[1:])})" if missing[1:] else ""),
            "see the schema in specmemo_plan/hardware.py or any bundled profile",
        )

    values: dict = {}
    for name, value in raw.items():
        kind = _FIELDS[name][0]
        values[name] = _check_field(origin, name, kind, value)

    for name in ("vendor", "backend"):
        allowed = VENDORS if name == "vendor" else BACKENDS
        if values[name] not in allowed:
            raise SpecMemoError(f"{origin}: field '{name}' is '{values[name]}'", "one of: " + ", ".join(allowed))
    if not values["name"].strip():
        raise SpecMemoError(f"{origin}: field 'name' is empty", "give the device's display name")
    if not values["sources"]:
        raise SpecMemoError(f"{origin}: field 'sources' is empty", "name the public spec page each number comes from")
    for src in values["sources"]:
        if not re.match(r"https?://\S+$", src):
            raise SpecMemoError(f"{origin}: field 'sources' has '{src}', not a URL", "give http(s) addresses")
    if values["backend"] == "cpu" and values.get("runtime_overhead_bytes", 0) != 0:
        raise SpecMemoError(f"{origin}: field 'runtime_overhead_bytes' must be 0 for a cpu profile", None)

    return HardwareProfile(key=key, **values)


def _check_field(origin: str, name: str, kind: str, value):
    where = f"{origin}: field '{name}'"
    if kind == _STR:
        if not isinstance(value, str):
            raise SpecMemoError(f"{where} must be a string, got {type(value).__name__}", None)
        return value.strip()
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise SpecMemoError(f"{where} must be true or false, got {type(value).__name__}", None)
        return value
    if kind == _STRLIST:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecMemoError(f"{where} must be a list of strings", None)
        return tuple(v.strip() for v in value if v.strip())
    # numbers: bool is an int in Python, but not a number here
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecMemoError(f"{where} must be a number, got {type(value).__name__}", None)
    if kind == _INT and not isinstance(value, int):
        raise SpecMemoError(f"{where} must be an integer (bytes are whole numbers), got {value!r}", None)
    if not math.isfinite(value):
        raise SpecMemoError(f"{where} must be finite, got {value!r}", None)
    if name in _POSITIVE and value <= 0:
        raise SpecMemoError(f"{where} must be positive, got {value!r}", None)
    if value < 0:
        raise SpecMemoError(f"{where} must not be negative, got {value!r}", None)
    return int(value) if kind == _INT else float(value)


# ----------------------------------------------------------------------------- matching


def _pattern_hits(pattern: str, device_name: str) -> bool:
    """`pattern` occurs in `device_name` as whole words (case-insensitive), not followed by a variant word
    ("RTX 3090" is not in "RTX 3090 Ti"; "RTX 4060 Laptop" is in "NVIDIA GeForce RTX 4060 Laptop GPU")."""
    pat = " ".join(pattern.lower().split())
    name = " ".join(device_name.lower().split())
    if not pat:
        return False
    for m in re.finditer(r"(?<![a-z0-9])" + re.escape(pat) + r"(?![a-z0-9])", name):
        rest = re.sub(r"^[\s\-_]+", "", name[m.end() :])
        if any(
            re.match(re.escape(v) + r"(?![a-z0-9])", rest)
            and not re.search(r"(?<![a-z0-9])" + re.escape(v) + r"(?![a-z0-9])", pat)
            for v in VARIANT_WORDS
        ):
            continue
        return True
    return False


def _match_score(profile: HardwareProfile, device_name: str) -> int:
    """Length of the longest pattern of `profile` found in `device_name`; 0 when none."""
    return max((len(p) for p in profile.match if _pattern_hits(p, device_name)), default=0)


def _keys_matching_name(device_name: str) -> list[str]:
    """Profiles whose best pattern match on `device_name` is the longest (memory not considered)."""
    scores = {k: _match_score(p, device_name) for k, p in load_all_profiles().items()}
    best = max(scores.values(), default=0)
    return sorted(k for k, s in scores.items() if s and s == best)


def match_profile(device: ProbedDevice) -> str | None:
    """Key of the profile that fits a probed device, or None.

    The CPU device takes the "cpu" profile. A GPU takes the profile of its backend whose `match` pattern is the
    longest whole-word match in the device name and whose `memory_bytes` is within MEMORY_MATCH_TOLERANCE of the
    probed total (when the probe knows it); a tie goes to the closer memory.
    """
    if device.backend == "cpu":
        return "cpu" if "cpu" in list_profiles() else None
    best: tuple[int, float, str] | None = None
    for key, prof in load_all_profiles().items():
        if prof.backend != device.backend:
            continue
        score = _match_score(prof, device.name)
        if not score:
            continue
        gap = 0.0
        if device.total_memory_bytes and device.total_memory_bytes > 0:
            gap = abs(device.total_memory_bytes - prof.memory_bytes) / prof.memory_bytes
            if gap > MEMORY_MATCH_TOLERANCE:
                continue
        cand = (score, -gap, key)
        if best is None or cand[:2] > best[:2]:
            best = cand
    return best[2] if best else None


def profile_for_device(device: ProbedDevice) -> HardwareProfile:
    """The matched profile's spec numbers, with `memory_bytes` replaced by the total this device reports
    (for the CPU: MemTotal from /proc/meminfo, or the cgroup limit when lower)."""
    key = device.profile_key or match_profile(device)
    if key is None:
        raise SpecMemoError(
            f"no hardware profile matches the {device.backend} device '{device.name}'",
            "pass a bundled profile (" + close_names(device.name.lower(), list_profiles()) + ") or a .toml file",
        )
    prof = load_profile(key)
    if device.total_memory_bytes and device.total_memory_bytes > 0:
        prof = dataclasses.replace(prof, memory_bytes=int(device.total_memory_bytes))
    return prof


# ----------------------------------------------------------------------------- derived numbers


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


# ----------------------------------------------------------------------------- probing


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


@contextlib.contextmanager
def _quiet_stdout(captured: list[str]):
    """Send everything written to stdout, by Python code or C code (file descriptor 1), to a buffer.

    The text lands in `captured` (so a note can quote it); nothing reaches the real stdout.
    """
    buf = io.StringIO()
    saved_fd = None
    sink = None
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        saved_fd = os.dup(1)
        sink = os.open(os.devnull, os.O_WRONLY)
        os.dup2(sink, 1)
    except OSError:
        saved_fd = None  # no usable fd 1 (embedded interpreter): Python-level redirection still applies
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        try:
            sys.stdout.flush()
        except Exception:
            pass
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        if sink is not None:
            os.close(sink)
        captured.append(buf.getvalue())


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _reason(exc: BaseException, printed: list[str]) -> str:
    msg = str(exc) or ""
    why = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    said = _one_line(" ".join(p for p in printed if p.strip()), 100)
    return _one_line(why + (f" (it printed: {said})" if said else ""))


def _try(module, fn_name: str, *args):
    """module.fn_name(*args), or None when the function is missing (older bindings) or fails."""
    try:
        return getattr(module, fn_name)(*args)
    except Exception:
        return None


def _probe_nvml() -> tuple[list[ProbedDevice], list[str]]:
    printed: list[str] = []
    try:
        with _quiet_stdout(printed):
            import pynvml
    except Exception as e:  # ImportError, or anything a broken install raises
        return [], [f"NVML not available: nvidia-ml-py could not be imported ({_reason(e, printed)})"]
    devices: list[ProbedDevice] = []
    try:
        with _quiet_stdout(printed):
            pynvml.nvmlInit()
    except Exception as e:
        return [], [f"NVML not available: {_reason(e, printed)}"]
    try:
        with _quiet_stdout(printed):
            count = pynvml.nvmlDeviceGetCount()
            for i in range(count):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                if isinstance(name, bytes):
                    name = name.decode("utf-8", "replace")
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                details: dict = {}
                bus = _try(pynvml, "nvmlDeviceGetMemoryBusWidth", h)
                clock = _try(pynvml, "nvmlDeviceGetMaxClockInfo", h, getattr(pynvml, "NVML_CLOCK_MEM", 2))
                if bus:
                    details["memory_bus_width_bits"] = int(bus)
                if clock:
                    details["max_memory_clock_mhz"] = int(clock)
                if bus and clock:
                    details["theoretical_bandwidth_gbps"] = round(theoretical_bandwidth_gbps(int(bus), int(clock)), 1)
                cc = _try(pynvml, "nvmlDeviceGetCudaComputeCapability", h)
                if cc:
                    details["compute_capability"] = f"{cc[0]}.{cc[1]}"
                pci = _try(pynvml, "nvmlDeviceGetPciInfo", h)
                bus_id = getattr(pci, "busId", None) if pci is not None else None
                if bus_id:
                    details["pci_bus_id"] = bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id)
                gen = _try(pynvml, "nvmlDeviceGetMaxPcieLinkGeneration", h)
                width = _try(pynvml, "nvmlDeviceGetMaxPcieLinkWidth", h)
                if gen and width:
                    details["max_pcie_link"] = f"gen{gen} x{width}"
                devices.append(
                    ProbedDevice(
                        index=i,
                        backend="cuda",
                        name=str(name),
                        total_memory_bytes=int(mem.total),
                        free_memory_bytes=int(mem.free),
                        details=details,
                        source="nvml",
                    )
                )
    except Exception as e:
        return devices, [f"NVML failed while listing devices: {_reason(e, printed)}"]
    finally:
        with contextlib.suppress(Exception), _quiet_stdout(printed):
            pynvml.nvmlShutdown()
    notes = [] if devices else ["NVML: no NVIDIA GPU found"]
    if devices and os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, ""):
        notes.append("NVML lists every GPU; CUDA_VISIBLE_DEVICES restricts what torch will use")
    return devices, notes


def _probe_amdsmi() -> tuple[list[ProbedDevice], list[str]]:
    printed: list[str] = []
    try:
        # Without ROCm, `import amdsmi` prints to stdout and raises KeyError (its ctypes wrapper swallows the
        # OSError of the missing libamd_smi.so, then indexes a dict that was never filled).
        with _quiet_stdout(printed):
            import amdsmi
    except BaseException as e:  # KeyError, ImportError, OSError, even SystemExit from a broken wrapper
        if isinstance(e, KeyboardInterrupt):
            raise
        if isinstance(e, ModuleNotFoundError) and getattr(e, "name", None) == "amdsmi":
            return [], ["amdsmi not available: the amdsmi package is not installed"]
        return [], [f"amdsmi not available: {_reason(e, printed)}"]
    try:
        with _quiet_stdout(printed):
            amdsmi.amdsmi_init()
    except Exception as e:
        return [], [f"amdsmi not available: {_reason(e, printed)}"]
    devices: list[ProbedDevice] = []
    try:
        with _quiet_stdout(printed):
            vram = getattr(getattr(amdsmi, "AmdSmiMemoryType", None), "VRAM", 0)
            mem_clk = getattr(getattr(amdsmi, "AmdSmiClkType", None), "MEM", None)
            for i, h in enumerate(amdsmi.amdsmi_get_processor_handles()):
                asic = _try(amdsmi, "amdsmi_get_gpu_asic_info", h) or {}
                name = str(asic.get("market_name") or "").strip() or f"AMD GPU {i}"
                total = _try(amdsmi, "amdsmi_get_gpu_memory_total", h, vram)
                used = _try(amdsmi, "amdsmi_get_gpu_memory_usage", h, vram)
                details: dict = {}
                info = _try(amdsmi, "amdsmi_get_gpu_vram_info", h) or {}
                if isinstance(info, dict) and isinstance(info.get("vram_bit_width"), int):
                    details["memory_bus_width_bits"] = info["vram_bit_width"]
                clk = (_try(amdsmi, "amdsmi_get_clock_info", h, mem_clk) if mem_clk is not None else None) or {}
                if isinstance(clk, dict) and isinstance(clk.get("max_clk"), int):
                    details["max_memory_clock_mhz"] = clk["max_clk"]
                gfx = asic.get("target_graphics_version")
                if gfx:
                    details["gfx_target"] = str(gfx)
                bdf = _try(amdsmi, "amdsmi_get_gpu_device_bdf", h)
                if bdf:
                    details["pci_bus_id"] = str(bdf)
                total_i = int(total) if isinstance(total, int) else 0
                free = total_i - int(used) if isinstance(used, int) and total_i else None
                devices.append(
                    ProbedDevice(
                        index=i,
                        backend="rocm",
                        name=name,
                        total_memory_bytes=total_i,
                        free_memory_bytes=free,
                        details=details,
                        source="amdsmi",
                    )
                )
    except Exception as e:
        return devices, [f"amdsmi failed while listing devices: {_reason(e, printed)}"]
    finally:
        with contextlib.suppress(Exception), _quiet_stdout(printed):
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
        with _quiet_stdout(printed):
            import torch

            hip = getattr(torch.version, "hip", None)
            backend = "rocm" if hip else "cuda"
            if not torch.cuda.is_available():
                build = f"ROCm {hip}" if hip else (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only")
                return [], [f"torch {torch.__version__} ({build}): no CUDA/ROCm device visible"]
            devices = []
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                details: dict = {"multiprocessors": int(props.multi_processor_count)}
                if hip:
                    arch = getattr(props, "gcnArchName", None)
                    if arch:
                        details["gfx_target"] = str(arch)
                else:
                    details["compute_capability"] = f"{props.major}.{props.minor}"
                free = None
                got = _try(torch.cuda, "mem_get_info", i)
                if got:
                    free = int(got[0])
                devices.append(
                    ProbedDevice(
                        index=i,
                        backend=backend,
                        name=str(props.name),
                        total_memory_bytes=int(props.total_memory),
                        free_memory_bytes=free,
                        details=details,
                        source="torch",
                    )
                )
            return devices, []
    except Exception as e:
        return [], [f"torch device probe failed: {_reason(e, printed)}"]


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _meminfo() -> dict[str, int]:
    """/proc/meminfo fields in bytes (the file says kB: KiB)."""
    text = _read_text("/proc/meminfo") or ""
    out = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*(kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    return out


def _cpu_model_name() -> str:
    text = _read_text("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        m = re.search(rf"^{re.escape(key)}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return platform.processor() or platform.machine() or "CPU"


def _cgroup_memory() -> tuple[int | None, int | None]:
    """(limit, current usage) in bytes of this process's memory cgroup; None where there is none."""
    limit = usage = None
    for lim_path, use_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        raw = _read_text(lim_path)
        if raw is None:
            continue
        raw = raw.strip()
        if raw.isdigit():
            limit = int(raw)
            cur = (_read_text(use_path) or "").strip()
            usage = int(cur) if cur.isdigit() else None
        break
    return limit, usage


def _probe_cpu() -> tuple[ProbedDevice, list[str]]:
    notes: list[str] = []
    info = _meminfo()
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
    limit, usage = _cgroup_memory()
    if limit is not None and total and limit < total:
        details["meminfo_total_bytes"] = total
        details["cgroup_limit_bytes"] = limit
        notes.append(f"host RAM limited by the memory cgroup to {limit / 2**30:.1f} GiB of {total / 2**30:.1f} GiB")
        total = limit
        if usage is not None:
            free = max(0, limit - usage) if free is None else min(free, max(0, limit - usage))
    dev = ProbedDevice(
        index=0,
        backend="cpu",
        name=_cpu_model_name(),
        total_memory_bytes=int(total),
        free_memory_bytes=int(free) if free is not None else None,
        details=details,
        source=source,
    )
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
            notes.append(f"no bundled profile matches '{d.name}' ({d.total_memory_bytes / 2**30:.1f} GiB)")
    return devices, [_one_line(n, 200) for n in notes]


def _safe_match(device: ProbedDevice) -> str | None:
    try:
        return match_profile(device)
    except SpecMemoError:
        return None
