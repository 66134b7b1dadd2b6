"""What Linux tells about the host: RAM from /proc/meminfo, the CPU's name and flags from /proc/cpuinfo, and the memory
cgroup's limit (a container often has less RAM than the machine). Every reader returns nothing, never raises,
where the file is absent (macOS, Windows, a sandbox): the CPU probe then falls back to sysconf.

All file access goes through `read_text`, so a test can stand in for the whole of /proc and /sys.
"""

from __future__ import annotations

import platform
import re

KIB = 1024  # /proc/meminfo says "kB" and means KiB (see proc(5))

CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2: (limit, usage)
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
)


def read_text(path: str) -> str | None:
    """The file's text, or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def meminfo_bytes() -> dict[str, int]:
    """/proc/meminfo fields in bytes; {} without procfs."""
    text = read_text("/proc/meminfo") or ""
    out = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*(kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (KIB if m.group(3) else 1)
    return out


def cpu_model_name() -> str:
    """The CPU's name as /proc/cpuinfo gives it (x86 "model name", Arm "Model"/"Hardware", ...), else what the
    platform module knows."""
    text = read_text("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        m = re.search(rf"^{re.escape(key)}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return platform.processor() or platform.machine() or "CPU"


def cpu_flags() -> set[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (x86 "flags", Arm "Features"); empty
    without procfs."""
    text = read_text("/proc/cpuinfo") or ""
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    return set(m.group(1).split()) if m else set()


def cgroup_memory() -> tuple[int | None, int | None]:
    """(limit, current usage) in bytes of this process's memory cgroup; None where there is none
    ("max" in cgroup v2 means no limit)."""
    limit = usage = None
    for lim_path, use_path in CGROUP_FILES:
        raw = read_text(lim_path)
        if raw is None:
            continue
        raw = raw.strip()
        if raw.isdigit():
            limit = int(raw)
            cur = (read_text(use_path) or "").strip()
            usage = int(cur) if cur.isdigit() else None
        break
    return limit, usage
