"""Hardware profiles: what a device can do, from its spec sheet, read from one TOML file per device.

The bundled files live in the top-level `profiles/` folder of the checkout, installed as the package
`specmemo_plan.profiles`; their conventions (driver-reported memory, dense peaks, host-link bandwidth) are in
that folder's `__init__.py`. The schema is written once, as the `HardwareProfile` dataclass: the field types
are its annotations, a field without a default is required, and the metadata says which numbers must be
positive and which strings take a fixed set of values. The loader reads its table off the dataclass, so a
new field is declared in one place.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecMemoError, close_names

PROFILES_PACKAGE = "specmemo_plan.profiles"

VENDORS = ("nvidia", "amd", "cpu")
BACKENDS = ("cuda", "rocm", "cpu")

# Field metadata, read by `_schema`.
_FROM_FILE_NAME = {"in_file": False}  # not a TOML field: set from the file's stem
_POSITIVE = {"positive": True}  # must be > 0; every other number must be >= 0


@dataclass(frozen=True)
class HardwareProfile:
    """One device's spec-sheet numbers (a TOML file in profiles/). Units are in the field names."""

    key: str = field(metadata=_FROM_FILE_NAME)  # file stem, e.g. "rtx-3090"; what `load_profile` takes
    name: str  # display name
    vendor: str = field(metadata={"choices": VENDORS})
    backend: str = field(metadata={"choices": BACKENDS})  # the torch device kind that runs on it
    memory_bytes: int = field(metadata=_POSITIVE)  # total device memory as the driver reports it
    memory_bandwidth_gbps: float = field(metadata=_POSITIVE)  # peak memory bandwidth, GB/s (10^9 B/s), spec sheet
    peak_fp32_tflops: float = field(metadata=_POSITIVE)  # dense fp32 (non-tensor on NVIDIA, vector on AMD)
    peak_fp16_tflops: float = field(metadata=_POSITIVE)  # dense fp16, tensor/matrix cores where present, FP32 acc.
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


# ----------------------------------------------------------------------------- the schema, from the dataclass

_STRINGS = tuple[str, ...]
_KINDS = (str, bool, int, float, _STRINGS)  # the annotations `_check_field` knows how to read from TOML


@dataclass(frozen=True)
class _Rule:
    kind: object  # one of _KINDS
    required: bool  # the field has no default
    positive: bool = False
    choices: tuple[str, ...] | None = None


@functools.cache
def _schema() -> dict[str, _Rule]:
    """TOML field -> rule, in the dataclass's order, read off `HardwareProfile`."""
    hints = typing.get_type_hints(HardwareProfile)
    rules = {}
    for f in dataclasses.fields(HardwareProfile):
        if not f.metadata.get("in_file", True):
            continue
        if hints[f.name] not in _KINDS:
            raise TypeError(f"HardwareProfile.{f.name}: no TOML reading for {hints[f.name]}")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        rules[f.name] = _Rule(hints[f.name], required, f.metadata.get("positive", False), f.metadata.get("choices"))
    return rules


# ----------------------------------------------------------------------------- loading


def bundled_profiles_dir():
    """Where the bundled profiles are: the checkout's `profiles/` (editable install), or
    `specmemo_plan/profiles/` inside an installed wheel. A `Traversable`, as importlib.resources gives."""
    return importlib.resources.files(PROFILES_PACKAGE)


def list_profiles() -> list[str]:
    """Keys (file stems) of the bundled profiles, sorted."""
    return sorted(p.name[: -len(".toml")] for p in bundled_profiles_dir().iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str) -> HardwareProfile:
    """A bundled profile by key ("rtx-3090"), by a device name one profile matches ("NVIDIA GeForce RTX 3090"),
    or a TOML file by path (anything ending in .toml or containing a path separator)."""
    from .matching import keys_matching_name  # matching imports this module

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
    by_name = keys_matching_name(text)
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
    resource = bundled_profiles_dir().joinpath(f"{key}.toml")
    return _parse_profile(resource.read_bytes(), key=key, origin=f"profiles/{key}.toml")


def _parse_profile(data: bytes, key: str, origin: str) -> HardwareProfile:
    """Validate one TOML profile; every problem names the file and the field."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SpecMemoError(f"{origin}: not UTF-8 text ({e})", "save the profile as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecMemoError(f"{origin}: not valid TOML: {e}", "fix the TOML syntax at that line") from None

    schema = _schema()
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        bad = unknown[0]
        raise SpecMemoError(f"{origin}: unknown field '{bad}'", close_names(bad, schema))
    missing = [name for name, rule in schema.items() if rule.required and name not in raw]
    if missing:
        raise SpecMemoError(
            f"{origin}: missing field '{missing[0]}'" + (f" (also: {', '.join(missing[1:])})" if missing[1:] else ""),
            "see HardwareProfile in specmemo_plan/hardware/profiles.py, or any bundled profile",
        )
    values = {name: _check_field(origin, name, schema[name], value) for name, value in raw.items()}
    _check_profile(origin, values)
    return HardwareProfile(key=key, **values)


def _check_profile(origin: str, values: dict) -> None:
    """The rules that span a field's meaning, not its type."""
    if not values["name"]:
        raise SpecMemoError(f"{origin}: field 'name' is empty", "give the device's display name")
    if not values["sources"]:
        raise SpecMemoError(f"{origin}: field 'sources' is empty", "name the public spec page each number comes from")
    for src in values["sources"]:
        if not re.match(r"https?://\S+$", src):
            raise SpecMemoError(f"{origin}: field 'sources' has '{src}', not a URL", "give http(s) addresses")
    if values["backend"] == "cpu" and values.get("runtime_overhead_bytes", 0) != 0:
        raise SpecMemoError(f"{origin}: field 'runtime_overhead_bytes' must be 0 for a cpu profile", None)


def _check_field(origin: str, name: str, rule: _Rule, value):
    """One TOML value, checked against its rule and converted to the dataclass's type."""
    where = f"{origin}: field '{name}'"
    if rule.kind is str:
        if not isinstance(value, str):
            raise SpecMemoError(f"{where} must be a string, got {type(value).__name__}", None)
        value = value.strip()
        if rule.choices and value not in rule.choices:
            raise SpecMemoError(f"{where} is '{value}'", "one of: " + ", ".join(rule.choices))
        return value
    if rule.kind is bool:
        if not isinstance(value, bool):
            raise SpecMemoError(f"{where} must be true or false, got {type(value).__name__}", None)
        return value
    if rule.kind == _STRINGS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecMemoError(f"{where} must be a list of strings", None)
        return tuple(v.strip() for v in value if v.strip())
    return _check_number(where, rule, value)


def _check_number(where: str, rule: _Rule, value) -> int | float:
    # bool is an int in Python, but not a number here
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecMemoError(f"{where} must be a number, got {type(value).__name__}", None)
    if rule.kind is int and not isinstance(value, int):
        raise SpecMemoError(f"{where} must be an integer (bytes are whole numbers), got {value!r}", None)
    if not math.isfinite(value):
        raise SpecMemoError(f"{where} must be finite, got {value!r}", None)
    if rule.positive and value <= 0:
        raise SpecMemoError(f"{where} must be positive, got {value!r}", None)
    if value < 0:
        raise SpecMemoError(f"{where} must not be negative, got {value!r}", None)
    return int(value) if rule.kind is int else float(value)
