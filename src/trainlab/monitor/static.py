"""`trainlab monitor --static`: the monitor's panels as one PNG."""

import math
from pathlib import Path

from ..report.plotting import pyplot, save_figure
from .data import collect


def static_plot(root: str | Path, output: str | Path, metrics: list[str] | None = None) -> Path:
    plt = pyplot()
    data = collect(root, metrics)
    n = len(data["metrics"])
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, data["metrics"]):
        for run in data["runs"]:
            for line, points in run["series"][metric].items():
                if points:
                    steps, values = zip(*points)
                    label = run["name"] if line in (metric, "blobs", "norms") else f"{run['name']} ({line})"
                    ax.plot(steps, values, marker="o" if len(points) < 40 else None, ms=3,
                            ls="--" if line == "train" else "-", label=f"{label} [{run['status']}]")
        ax.set(title=metric, xlabel="step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        if metric == "loss" and any(v > 0 for run in data["runs"] for pts in run["series"][metric].values()
                                    for _, v in pts):
            ax.set_yscale("log")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, output, dpi=100)
    plt.close(fig)
    return output
