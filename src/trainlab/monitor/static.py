"""`trainlab monitor --static`: the monitor's panels as one PNG, drawn from what `collect`
decides (gaps, the shared step range, log axes, seed bands)."""

import math
from pathlib import Path

import numpy as np

from ..report.plotting import pyplot, save_figure
from .data import collect


def colours(plt, count: int) -> list:
    """Ten distinct colours, then twenty, then evenly spaced hues: never two lines alike."""
    if count <= 10:
        return list(plt.get_cmap("tab10").colors)
    if count <= 20:
        return list(plt.get_cmap("tab20").colors)
    return [plt.get_cmap("hsv")(i / count) for i in range(count)]


def as_arrays(points: list) -> tuple[np.ndarray, ...]:
    """Columns of [[step, value, ...]] with None as NaN, which matplotlib leaves as a gap."""
    table = np.array([[np.nan if v is None else v for v in p] for p in points], dtype=float)
    return tuple(table.T)


def static_plot(root: str | Path, output: str | Path, metrics: list[str] | None = None) -> Path:
    plt = pyplot()
    data = collect(root, metrics)
    n = len(data["metrics"])
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4 * rows), squeeze=False)
    banded = {run["name"] for run in data["runs"] if run["group"] is not None and any(
        b["name"] == run["group"] for bands in data["bands"].values() for b in bands)}
    names = [run["name"] for run in data["runs"] if run["name"] not in banded]
    names += list(dict.fromkeys(b["name"] for bands in data["bands"].values() for b in bands))
    colour = dict(zip(names, colours(plt, len(names))))
    for ax, metric in zip(axes.flat, data["metrics"]):
        for run in data["runs"]:
            if run["name"] in banded:
                continue  # drawn as its configuration's band below
            for line, points in run["series"][metric].items():
                if points:
                    steps, values = as_arrays(points)
                    label = run["name"] if line in (metric, "blobs", "norms") else f"{run['name']} ({line})"
                    ax.plot(steps, values, marker="o" if len(points) < 40 else None, ms=3, color=colour[run["name"]],
                            ls="--" if line == "train" else "-", label=f"{label} [{run['status']}]")
        for band in data["bands"][metric]:
            steps, mean, std = as_arrays(band["points"])
            label = band["name"] if band["line"] in (metric, "blobs", "norms") else f"{band['name']} ({band['line']})"
            ax.plot(steps, mean, color=colour[band["name"]], ls="--" if band["line"] == "train" else "-",
                    marker="o" if len(steps) < 40 else None, ms=3, label=f"{label}: mean of {band['seeds']} seeds")
            ax.fill_between(steps, mean - std, mean + std, color=colour[band["name"]], alpha=0.2, lw=0)
        ax.set(title=metric, xlabel="step", xlim=data["x_range"] if data["x_range"][1] > data["x_range"][0] else None)
        scale = data["scales"][metric]
        if scale != "linear":
            ax.set_yscale(scale, **({"linthresh": 1e-3} if scale == "symlog" else {}))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2 if len(names) > 8 else 1)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, output, dpi=100)
    plt.close(fig)
    return output
