"""Hardware: what a device can do (profiles), which profile a device is (matching), what this machine has
(probe), and which device a plan is for (local).

- `profiles`: the `HardwareProfile` dataclass and the TOML loader for the files in the top-level `profiles/`.
- `matching`: probed device names and memory against the profiles' `match` patterns.
- `probe`: NVML, amdsmi, torch and the OS (`procfs`), never writing to stdout (`quiet`).
- `local`: `this_device`, the one answer to "which device am I on".

Importing this package imports no torch, pynvml or amdsmi: the probes import them when they run.
"""

from .local import LocalDevice, this_device
from .matching import MEMORY_MATCH_TOLERANCE, VARIANT_WORDS, match_profile, profile_for_device
from .probe import ProbedDevice, probe_devices, theoretical_bandwidth_gbps
from .profiles import (
    BACKENDS,
    VENDORS,
    HardwareProfile,
    bundled_profiles_dir,
    list_profiles,
    load_all_profiles,
    load_profile,
)

__all__ = [
    "BACKENDS",
    "MEMORY_MATCH_TOLERANCE",
    "VARIANT_WORDS",
    "VENDORS",
    "HardwareProfile",
    "LocalDevice",
    "ProbedDevice",
    "bundled_profiles_dir",
    "list_profiles",
    "load_all_profiles",
    "load_profile",
    "match_profile",
    "probe_devices",
    "profile_for_device",
    "theoretical_bandwidth_gbps",
    "this_device",
]
