"""`compare --plot`: a stacked bar of each device's memory breakdown beside its predicted speed.

matplotlib is an optional extra (`pip install 'specmemo-plan[plot]'`); without it, a clear error.
`check_plot_path` runs before the command's work: matplotlib present, a format it writes (named by
the extension: matplotlib would otherwise pick PNG and append `.png` to a bare name), a folder that
takes the file. The chart renders in memory and is written atomically (files.write_bytes_atomic).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from .errors import SpecMemoError
from .files import check_output_path, write_bytes_atomic
from .memory import COMPONENTS

# Formats matplotlib's Agg canvas writes with its own dependencies (Pillow for the bitmaps);
# pgf needs LaTeX, raw/rgba are not images a viewer opens.
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpecMemoError("--plot needs matplotlib", "pip install 'specmemo-plan[plot]' (or: pip install matplotlib)") from None
    return plt


def check_plot_path(path: str | os.PathLike, inputs=()) -> str:
    """The image format of `path` (its extension), or a SpecMemoError: no matplotlib, an extension
    it cannot write, or a path files.check_output_path refuses."""
    plt = _pyplot()
    fmt = Path(path).suffix.lower().lstrip(".")
    supported = set(plt.figure().canvas.get_supported_filetypes()) & set(PLOT_FORMATS)
    plt.close("all")
    if fmt not in supported:
        what = f"extension .{fmt}" if fmt else "no extension"
        raise SpecMemoError(f"--plot {path}: {what} is not an image format matplotlib writes here",
                            "end the name with one of: " + ", ".join(f".{f}" for f in sorted(supported)))
    check_output_path(path, inputs)
    return fmt


def plot_comparison(verdicts, path: str, title: str, inputs=()) -> str:
    fmt = check_plot_path(path, inputs)
    plt = _pyplot()
    names = [v.profile for v in verdicts]
    fig, (ax_mem, ax_speed) = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(names) + 4), 4.8))
    bottom = [0.0] * len(verdicts)
    for component in COMPONENTS:
        values = [(v.best_breakdown or {}).get("components", {}).get(component, 0) / 2**30 for v in verdicts]
        ax_mem.bar(names, values, bottom=bottom, label=component)
        bottom = [b + x for b, x in zip(bottom, values)]
    ax_mem.scatter(names, [v.memory_bytes / 2**30 for v in verdicts], marker="_", s=400, color="black", label="device memory")
    ax_mem.set_ylabel("GiB")
    ax_mem.set_title("memory of the best configuration")
    ax_mem.legend(fontsize=7)
    x = range(len(names))
    ax_speed.bar([i - 0.2 for i in x], [v.plain_tokens_per_s or 0 for v in verdicts], width=0.4, label="plain")
    ax_speed.bar([i + 0.2 for i in x], [v.sd_tokens_per_s or 0 for v in verdicts], width=0.4, label="best (SD or plain)")
    ax_speed.set_xticks(list(x), names)
    ax_speed.set_ylabel("predicted tokens/s")
    ax_speed.set_title("throughput")
    ax_speed.legend(fontsize=7)
    for ax in (ax_mem, ax_speed):
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=fmt, dpi=120)
    except Exception as exc:  # a format whose writer is missing here (Pillow built without it)
        raise SpecMemoError(f"matplotlib cannot write {path} as {fmt}: {exc}", "use a .png or .svg name") from None
    finally:
        plt.close(fig)
    write_bytes_atomic(buffer.getvalue(), path, inputs)
    return path
