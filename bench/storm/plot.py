"""Clients booted over time, both systems, one subplot per (N, initrd size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"plasmaboot": "tab:blue", "dnsmasq+nginx": "tab:orange"}


def plot_timelines(cells: list[dict[str, Any]], path: Path) -> None:
    """Each line is the median run (by time to all-booted) of one system in one cell; the
    dashed line is the physical limit for that cell's bytes."""
    fig, axes = plt.subplots(1, len(cells), figsize=(5.5 * len(cells), 4), squeeze=False)
    for ax, cell in zip(axes[0], cells, strict=True):
        for system, summary in cell["systems"].items():
            times = sorted(summary["median_run_booted_at"])
            ax.step(times, range(1, len(times) + 1), where="post", label=system,
                    color=COLOURS.get(system))  # fmt: skip
        ax.axvline(cell["physical_limit_s"], linestyle="--", color="grey", label="physical limit")
        ax.set_title(f"N={cell['clients']}, initrd {cell['initrd_mib']} MiB")
        ax.set_xlabel("seconds since power-on")
        ax.set_ylabel("clients booted")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
