"""Figures for reports (matplotlib, Agg backend: no display needed)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.sweep import value_order, short_label, levels
from .plotting import pyplot, save_figure


def curves_figure(metrics: pd.DataFrame, path, smooth: int = 10) -> Path:
    """Training/held-out loss (log scale) and held-out accuracy per arm, averaged over trials.
    `path`: a Path, or an io.Anchor inside a study (as for every figure here)."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    train = metrics[metrics["kind"] == "train"]
    evals = metrics[metrics["kind"] == "eval"]
    for i, arm in enumerate(pd.unique(metrics["arm"].dropna())):
        color = colors[i % len(colors)]
        tr = train[train["arm"] == arm].groupby("step")["loss"].mean()
        if len(tr):
            ax_loss.plot(tr.index, tr.rolling(smooth, min_periods=1).mean(), color=color, alpha=0.45, lw=1,
                         label=f"{arm} train")
        ev = evals[evals["arm"] == arm].groupby("step")[["loss", "accuracy"]].mean()
        if len(ev):
            ax_loss.plot(ev.index, ev["loss"], color=color, lw=2, marker="o", ms=3, label=f"{arm} held-out")
            ax_acc.plot(ev.index, ev["accuracy"], color=color, lw=2, marker="o", ms=3, label=arm)
    ax_loss.set(xlabel="step", ylabel="loss", title="loss (train smoothed, held-out)")
    if (metrics.get("loss", pd.Series(dtype=float)) > 0).any():
        ax_loss.set_yscale("log")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="held-out accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def effects_figure(frame: pd.DataFrame, fields: list[str], metric: str, path) -> None:
    plt = pyplot()
    cols = min(3, len(fields))
    rows = math.ceil(len(fields) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, field in zip(axes.flat, fields):
        present = frame[frame[field].notna()]
        level = levels(present[field])
        values = sorted(level.unique(), key=value_order)
        groups = [present[level == v][metric].dropna().to_numpy() for v in values]
        ax.boxplot([g if len(g) else np.array([np.nan]) for g in groups],
                   tick_labels=[f"{short_label(v)}\nn={len(g)}" for v, g in zip(values, groups)])
        ax.set(title=field, ylabel=metric)
        ax.tick_params(axis="x", rotation=30)
    for ax in list(axes.flat)[len(fields):]:
        ax.set_visible(False)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
