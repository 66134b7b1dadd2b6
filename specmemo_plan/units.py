"""Parsing and printing sizes. Bytes are integers everywhere; GiB only for display."""

from __future__ import annotations

import math

import re

from .errors import SpecMemoError

UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


MAX_BYTES = 2**60  # an exbibyte: past any device or machine, and still exact in an int64 and a float


def parse_bytes(text: str | int, what: str = "size") -> int:
    """'24GiB', '24GB', '24000MB', '1.5 GiB' or plain bytes -> int bytes (decimal and binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = _SIZE.match(str(text))
        if not match or match.group(2).lower() not in UNITS:
            raise SpecMemoError(f"cannot read {what} {text!r}", "write it like 24GiB, 24GB, 24000MB or 25769803776")
        value, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(value * UNITS[unit]) or value * UNITS[unit] > MAX_BYTES:
        raise SpecMemoError(f"{what} {text!r} is beyond any device", f"give at most {MAX_BYTES // 2**50} PiB")
    nbytes = int(value * UNITS[unit])
    if nbytes <= 0:
        raise SpecMemoError(f"{what} must be positive, got {text!r}")
    return nbytes


def format_bytes(nbytes: int) -> str:
    """Human size in binary units: '12.55 GiB', '512.0 MiB'."""
    sign = "-" if nbytes < 0 else ""
    value = abs(nbytes)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{sign}{value / size:.2f} {unit}"
    return f"{sign}{value} B"
