"""Figures of the fault-recovery study. The injection step is drawn where it happened: at
the step of the injected update, on the same step axis as every curve."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.recovery import win_matrix
from .plotting import pyplot, save_figure


def _colors(arms) -> dict:
    plt = pyplot()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {arm: cycle[i % len(cycle)] for i, arm in enumerate(arms)}


def _mark_injection(ax, step: int) -> None:
    ax.axvline(step, color="crimson", ls="--", lw=1.2, label=f"injection (step {step})")


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(fig, path) -> Path:
    """`path`: a Path, or an io.Anchor inside a study (report/plotting.py save_figure)."""
    plt = pyplot()
    with warnings.catch_warnings():  # tight_layout may give up on crowded tick labels; the figure is still fine
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    path = save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def _arm_ticks(ax, count: int) -> None:
    """Arm names on the x axis stay readable with many arms: slanted, right-aligned, smaller."""
    for label in ax.get_xticklabels():
        label.set(rotation=40, ha="right", rotation_mode="anchor", fontsize=8 if count > 4 else 10)


def _bars(ax, arms, values, colors, title, ylabel):
    shown = [v if v is not None else np.nan for v in values]
    ax.bar(arms, shown, color=[colors[a] for a in arms])
    for i, v in enumerate(values):
        if v is None:
            ax.text(i, 0, "diverged", ha="center", va="bottom", fontsize=8, color="crimson")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(title=title, ylabel=ylabel)
    _arm_ticks(ax, len(arms))


def comparison_plots(evals: pd.DataFrame, results: dict, path: Path) -> Path:
    """Held-out accuracy, held-out loss (log), recovery per arm, degradation rate per arm."""
    plt = pyplot()
    arms, step = list(results["arms"]), results["injection"]["step"]
    colors = _colors(arms)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (acc, loss), (rec, deg) = axes
    for arm in arms:
        e = evals[evals["arm"] == arm].sort_values("step")
        acc.plot(e["step"], e["accuracy"], marker="o", ms=3, color=colors[arm], label=arm)
        loss.plot(e["step"], e["loss"], marker="o", ms=3, color=colors[arm], label=arm)
        div = results["arms"][arm]["divergence_step"]
        if div is not None:
            acc.plot([div], [e["accuracy"].iloc[-1] if len(e) else 0], "x", color=colors[arm], ms=10, mew=2)
    for ax in (acc, loss):
        _mark_injection(ax, step)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        _legend(ax)
    acc.set(title="held-out accuracy", ylabel="accuracy")
    loss.set(title="held-out loss", ylabel="loss", yscale="log")
    _bars(rec, arms, [results["arms"][a]["total_recovery"] for a in arms], colors,
          "total recovery (final - pre-injection accuracy)", "accuracy")
    _bars(deg, arms, [results["arms"][a]["degradation_rate"] for a in arms], colors,
          "degradation rate (accuracy slope after injection)", "accuracy / step")
    fig.suptitle(_title(results))
    return _save(fig, path)


def recovery_zoom(evals: pd.DataFrame, train: pd.DataFrame, results: dict, path: Path) -> Path:
    """Around the injection: held-out accuracy and per-step training loss."""
    plt = pyplot()
    arms, step = list(results["arms"]), results["injection"]["step"]
    colors = _colors(arms)
    lo = max(0, step - max(10, (evals["step"].max() - step) // 4))
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(12, 4.2))
    for arm in arms:
        e = evals[(evals["arm"] == arm) & (evals["step"] >= lo)].sort_values("step")
        t = train[(train["arm"] == arm) & (train["step"] >= lo)].sort_values("step")
        acc.plot(e["step"], e["accuracy"], marker="o", ms=3, color=colors[arm], label=arm)
        loss.plot(t["step"], t["loss"], color=colors[arm], lw=1, label=arm)
    for ax in (acc, loss):
        _mark_injection(ax, step)
        ax.grid(alpha=0.3)
        _legend(ax)
        ax.set_xlabel("step")
    acc.set(title="held-out accuracy around the injection", ylabel="accuracy")
    loss.set(title="training loss per step", ylabel="loss", yscale="log")
    fig.suptitle(_title(results))
    return _save(fig, path)


def _title(results: dict) -> str:
    inj = results["injection"]
    return (f"experiment {results['experiment']}: {inj['fault']} on {inj['target']} {inj['tensor']} "
            f"({len(inj['indices'])} elements) at step {inj['step']}")


def summary_visualizations(results: list[dict], trajectories: dict, path: Path) -> Path:
    """Six panels over all experiments (see the final report for what each shows)."""
    plt = pyplot()
    arms = list(results[0]["arms"])
    colors = _colors(arms)
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    box, traj, wins = axes[0]
    degr, size, heat = axes[1]

    data = [[r["arms"][a]["accuracy_change"] for r in results if r["arms"][a]["accuracy_change"] is not None]
            for a in arms]
    box.boxplot([d if d else [np.nan] for d in data], tick_labels=arms)
    box.axhline(0, color="black", lw=0.8)
    box.set(title="accuracy change after injection (final - post)", ylabel="accuracy")
    _arm_ticks(box, len(arms))

    for arm in arms:
        grid, curves = trajectories["grid"], trajectories[arm]
        if len(curves):
            with warnings.catch_warnings():  # steps no experiment reached (a diverged arm) stay gaps
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
            traj.plot(grid, mean, color=colors[arm], label=arm)
            traj.fill_between(grid, mean - std, mean + std, color=colors[arm], alpha=0.2)
    traj.axhline(0, color="black", lw=0.8)
    traj.set(title="mean recovery trajectory (± std over experiments)", xlabel="steps after injection",
             ylabel="accuracy - pre-injection accuracy")
    _legend(traj)
    traj.grid(alpha=0.3)

    matrix = win_matrix(results)
    image = wins.imshow(matrix.values.astype(float), vmin=0, vmax=1, cmap="RdYlGn")
    wins.set_xticks(range(len(arms)), arms)
    _arm_ticks(wins, len(arms))
    wins.set_yticks(range(len(arms)), arms, fontsize=8 if len(arms) > 4 else 10)
    for i in range(len(arms)):
        for j in range(len(arms)):
            if i != j:
                wins.text(j, i, f"{matrix.values[i, j]:.2f}", ha="center", va="center", fontsize=9)
    wins.set_title("win rate of row arm over column arm (final accuracy)")
    fig.colorbar(image, ax=wins, fraction=0.046)

    for arm in arms:
        rates = [r["arms"][arm]["degradation_rate"] for r in results if r["arms"][arm]["degradation_rate"] is not None]
        if rates:
            degr.hist(rates, bins=min(20, max(3, len(rates))), alpha=0.5, color=colors[arm], label=arm)
    degr.set(title="degradation rate distribution", xlabel="accuracy / step", ylabel="experiments")
    _legend(degr)

    for arm in arms:
        xs = [r["corruption"][arm] for r in results]
        ys = [r["arms"][arm]["total_recovery"] for r in results]
        pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None and x > 0]
        if pts:
            size.scatter(*zip(*pts), color=colors[arm], label=arm, alpha=0.7)
        dead = [x for x, r in zip(xs, results) if x and r["arms"][arm]["diverged"]]
        if dead:
            size.scatter(dead, [size.get_ylim()[0]] * len(dead), marker="x", color=colors[arm])
    size.set(title="recovery vs size of corruption (x: diverged)", xlabel="largest |new - old| (log)",
             ylabel="total recovery", xscale="log")
    _legend(size)

    steps = np.array([r["injection"]["step"] for r in results])
    edges = np.unique(np.quantile(steps, np.linspace(0, 1, min(5, len(steps)) + 1)))
    if len(edges) < 2:
        edges = np.array([steps.min(), steps.max() + 1])
    bins = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, len(edges) - 2)
    cells = np.full((len(arms), len(edges) - 1), np.nan)
    for i, arm in enumerate(arms):
        for b in range(len(edges) - 1):
            vals = [r["arms"][arm]["total_recovery"] for r, k in zip(results, bins) if k == b]
            vals = [v for v in vals if v is not None]
            cells[i, b] = np.mean(vals) if vals else np.nan
    image = heat.imshow(cells, cmap="RdYlGn", aspect="auto")
    heat.set_xticks(range(len(edges) - 1), [f"{int(edges[b])}-{int(edges[b + 1])}" for b in range(len(edges) - 1)],
                    rotation=30)
    heat.set_yticks(range(len(arms)), arms)
    heat.set(title="mean total recovery by injection step", xlabel="injection step")
    fig.colorbar(image, ax=heat, fraction=0.046)
    return _save(fig, path)
