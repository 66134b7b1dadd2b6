"""Which bundled profile a probed device is: its reported name against each profile's `match` patterns, and
its reported memory against the profile's, so that look-alike names ("RTX 3090 Ti", "RTX 4090 Laptop GPU",
the 32 GB Orin) do not borrow another product's numbers."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from ..errors import SpecMemoError, close_names
from .profiles import HardwareProfile, list_profiles, load_all_profiles, load_profile

if TYPE_CHECKING:
    from .probe import ProbedDevice

# A probed device matches a profile only if its total memory is within this fraction of the profile's
# memory_bytes: keeps a 16 GB "RTX 4090 Laptop GPU" off the 24 GB card, a 32 GB Orin off the 64 GB profile,
# and chooses between the A100 40GB and 80GB profiles. Driver totals differ from one driver to the next by
# well under 5%.
MEMORY_MATCH_TOLERANCE = 0.12

# Words that, right after a match pattern in a device name, make it another product: "RTX 3090 Ti",
# "RTX 4090 D", "RTX 4090 Laptop GPU". A pattern that itself contains the word still matches.
VARIANT_WORDS = ("ti", "super", "laptop", "mobile", "max-q", "d")


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


def keys_matching_name(device_name: str) -> list[str]:
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
