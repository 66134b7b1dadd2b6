"""Every table the project prints, in one style: the primitives here, the tables per area in planner.py
(calculator commands) and workflow.py (profile, tune, verify, the engine's runs).

Nothing here computes a result; tests assert on the numbers, not on these tables.
"""

from __future__ import annotations

from tabulate import tabulate

from ..memory import COMPONENTS, MemoryBreakdown
from ..units import format_bytes


def table(rows, headers, **kwargs) -> str:
    """The one table style of the project."""
    return tabulate(rows, headers=headers, tablefmt="simple", **kwargs)


def gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3f}"


def breakdown_table(memory: MemoryBreakdown) -> str:
    total = memory.total_bytes or 1
    rows = [[name, gib(memory.components[name]), f"{100 * memory.components[name] / total:.1f}%"] for name in COMPONENTS]
    rows.append(["total", gib(memory.total_bytes), "100.0%"])
    rows.append(["generation (total - weights)", gib(memory.generation_bytes), f"{100 * memory.generation_bytes / total:.1f}%"])
    return table(rows, ["component", "GiB", "share"], colalign=("left", "right", "right"))


def key_values(pairs) -> str:
    """Two-column table of (label, value)."""
    return tabulate([[k, v] for k, v in pairs], tablefmt="plain")


def describe_bytes(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{format_bytes(nbytes)} ({nbytes:,} B)"
