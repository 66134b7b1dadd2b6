"""`compare --plot`: a stacked bar of each device's memory breakdown beside its predicted speed.

matplotlib is an optional extra (`pip install 'specmemo-plan[plot]'`); without it, a clear error.
"""

from __future__ import annotations

from .errors import SpecMemoError
from .memory import COMPONENTS


def plot_comparison(verdicts, path: str, title: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpecMemoError("--plot needs matplotlib", "pip install 'specmemo-plan[plot]' (or: pip install matplotlib)") from None
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
