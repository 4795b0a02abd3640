"""Stage 6 of the dynamics study: the validation-loss spread of the many runs, and a figure
per stage (SGD then GD loss, top Hessian eigenvalues, the runs' spread over steps, GD vs SGD).

Everything is read from the stages' stored outputs, so `trainlab report DIR` rebuilds it."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..curvature.hessian import has_batchnorm
from ..data.batches import rows
from ..engine import Trial
from ..io import Anchor, plain_file, read_json, read_jsonl
from ..models.outputs import forward
from ..plugin import register_report
from ..report.plotting import pyplot, save_figure
from ..report.text import fmt
from ..study.store import StudyStore
from .dynamics import (STAGES, DynamicsSetup, pending_rewrite, stored_setup, stored_stages,
                       trial_spec)

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def build_dynamics_report(study_dir) -> Path:
    store = StudyStore.open(study_dir)
    pending_rewrite(store)
    s = stored_setup(store)
    stages = {key: folder for key, (folder, _) in stored_stages(store).items()}
    folder = store.place("val_loss").mkdir()
    done = sorted(stages, key=lambda key: (key[0], key[1] or 0))
    lines = [f"# SGD vs GD dynamics: experiment {s.experiment}, setup {s.setup}", "",
             f"- task `{s.task['name']}`, trained on {s.train_data}, validated on {s.val_data}; sampler {s.sampler} "
             f"(stage 1: {s.stage1_sampler}), {s.dtype}, batch {s.batch_size}, seed {s.seed}",
             "- stages finished: " + (", ".join(STAGES[k] + (f" lr {lr:g}" if lr else "") for k, lr in done) or "none"),
             ""]
    if (2, None) in stages:  # where every run of stages 3-5 starts
        arm = read_json(stages[2, None] / "summary.json").get("arms", {}).get("gd", {})
        lines[-1:-1] = [f"- the runs start where GD (stage 2) ended: held-out loss {fmt(arm.get('final_test_loss'), 6)}, "
                        f"accuracy {fmt(arm.get('final_test_accuracy'))}"]
    figures, drawn = figure_lines(s, stages, folder)
    lines += figures
    lrs = [lr for lr in s.lrs if (4, lr) in stages and (2, None) in stages]  # the mean-weight model needs stage 2
    if not lrs:
        lines += ["The many-run stage has not finished: no validation-loss distribution yet.", ""]
        remove_stale(folder, drawn)
        return store.write_text("report.md", "\n".join(lines))
    frame, summary = spread_summary(s, stages, lrs)
    (folder / "val_loss.csv").write_text(frame.to_csv(index=False))
    (folder / "summary.json").write_json(summary)
    histograms(frame, summary, lrs, folder / "histograms.png")
    remove_stale(folder, drawn | {"val_loss.csv", "summary.json", "histograms.png"})
    lines += ["## Validation loss after the last step of each run", "",
              "| lr | runs | mean | std | 5% | 95% | mean-weight model |", "|---|---|---|---|---|---|---|"]
    for lr in lrs:
        row = summary[f"lr={lr:g}"]
        lines.append(f"| {lr:g} | {row['runs']} | {row['mean']:.6g} | {row['std']:.4g} | {row['quantiles']['0.05']:.6g}"
                     f" | {row['quantiles']['0.95']:.6g} | {row['mean_weight_model_val_loss']:.6g} |")
    lines += ["", "std is the sample standard deviation over runs (ddof 1).",
              f"Spread grows with the learning rate: {summary['spread_grows_with_lr']}."]
    if summary.get("mean_weight_model_batchnorm"):
        lines.append(f"Mean-weight model: {summary['mean_weight_model_batchnorm']}.")
    lines += ["", "![histograms](val_loss/histograms.png)", ""]
    return store.write_text("report.md", "\n".join(lines))


def spread_summary(s: DynamicsSetup, stages: dict, lrs: list[float]) -> tuple[pd.DataFrame, dict]:
    rows_, summary = [], {}
    for lr in lrs:
        runs_dir = stages[(4, lr)]
        runs = read_json(runs_dir / "runs.json")
        for i, seed in enumerate(runs["seeds"]):
            rows_.append({"lr": lr, "sampler": s.sampler, "run": i, "seed": seed,
                          "first_val_loss": runs["first"]["loss"][i], "last_val_loss": runs["last"]["loss"][i],
                          "first_val_accuracy": runs["first"]["accuracy"][i],
                          "last_val_accuracy": runs["last"]["accuracy"][i]})
        last = np.array(runs["last"]["loss"])
        final = np.asarray(np.load(plain_file(runs_dir / "weights.npy"), mmap_mode="r")[:, -1])
        mean_loss, how = mean_weight_loss(s, stages[(2, None)] / "checkpoint.pt", lr, final.mean(axis=0))
        summary[f"lr={lr:g}"] = {"sampler": s.sampler, "runs": len(last), "mean": float(last.mean()),
                                 "std": float(last.std(ddof=1)), "std_population": float(last.std()),
                                 "quantiles": {str(q): float(np.quantile(last, q)) for q in QUANTILES},
                                 "mean_weight_model_val_loss": mean_loss,
                                 "weight_spread": float(final.std(axis=0).mean())}
        if how:
            summary["mean_weight_model_batchnorm"] = how
    ordered = [summary[f"lr={lr:g}"]["std"] for lr in sorted(lrs)]
    summary["spread_grows_with_lr"] = bool(all(a < b for a, b in zip(ordered, ordered[1:])))
    summary["std_by_lr"] = {f"lr={lr:g}": summary[f"lr={lr:g}"]["std"] for lr in lrs}
    return pd.DataFrame(rows_), summary


def mean_weight_loss(s: DynamicsSetup, checkpoint: Path, lr: float, flat: np.ndarray) -> tuple[float, str]:
    """Validation loss of the model whose weights are the runs' mean. Averaged weights need
    their own BatchNorm statistics (no run's running statistics belong to them): they are
    recomputed over the whole training set, and the second value says so."""
    trial = Trial(trial_spec(s, "sgd", lr, steps=1, init_from=checkpoint))
    model = trial.arms[0].model
    params = list(model.parameters())
    torch.nn.utils.vector_to_parameters(torch.from_numpy(flat).to(params[0]), params)
    how = ""
    if has_batchnorm(model):
        recompute_batchnorm(model, trial.x_train, trial.plan["eval_batch_size"])
        how = f"BatchNorm statistics recomputed over the {len(trial.y_train)} training samples with the mean weights"
    return trial.evaluate_model(model)["loss"], how


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, x_train, chunk: int) -> None:
    """Set every BatchNorm layer's running statistics to those of its input over the whole
    training set (mean and unbiased variance per channel, as one batch of all samples would
    give). A layer's input depends on the layers before it, so each pass fixes at least one
    more layer in execution order: as many passes as layers make all of them exact."""
    layers = [m for m in model.modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    was_training = model.training
    model.eval()
    for _ in layers:
        sums = {layer: [0.0, 0.0, 0] for layer in layers}

        def collect(layer, inputs):
            x = inputs[0].double().transpose(0, 1).reshape(inputs[0].shape[1], -1)  # [channels, samples x positions]
            total = sums[layer]
            total[0], total[1], total[2] = total[0] + x.sum(1), total[1] + (x * x).sum(1), total[2] + x.shape[1]

        handles = [layer.register_forward_pre_hook(collect) for layer in layers]
        try:
            for start in range(0, len(x_train), chunk):
                forward(model, rows(x_train, slice(start, start + chunk)))
        finally:
            for handle in handles:
                handle.remove()
        for layer, (total, squares, count) in sums.items():
            mean = total / count
            layer.running_mean.copy_(mean)
            layer.running_var.copy_((squares - count * mean * mean) / max(count - 1, 1))
    model.train(was_training)


# ---------------------------------------------------------------- figures per stage


FIGURES = (("curves.png", "Training loss: SGD (stage 1), then GD (stage 2)"),
           ("eigenvalues.png", "Top Hessian eigenvalues along SGD (stage 3)"),
           ("spread.png", "The many runs over steps (stage 4)"),
           ("gd_vs_sgd.png", "GD (stage 5) vs the mean of the SGD runs (stage 4)"))
OUTPUTS = {name for name, _ in FIGURES} | {"val_loss.csv", "summary.json", "histograms.png"}


def remove_stale(folder: Anchor, written: set) -> None:
    """Outputs of an earlier report that this one could not draw (their stages were replaced
    and have not finished again) go: the folder never shows old results beside new ones."""
    for name in OUTPUTS - written:
        (folder / name).unlink()


def figure_lines(s: DynamicsSetup, stages: dict, folder: Anchor) -> tuple[list[str], set]:
    """Draw every figure whose stages have finished; the report's lines and the files drawn."""
    lines, drawn = [], set()
    draws = {"curves.png": sgd_then_gd, "eigenvalues.png": eigenvalues, "spread.png": spread_over_steps,
             "gd_vs_sgd.png": gd_vs_sgd}
    for name, title in FIGURES:
        if draws[name](s, stages, folder / name):
            lines += [f"## {title}", "", f"![{name}](val_loss/{name})", ""]
            drawn.add(name)
    return lines, drawn


def train_losses(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    records = [r for r in read_jsonl(folder / "metrics.jsonl") if r.get("kind") == "train"]
    return np.array([r["step"] for r in records]), np.array([r.get("loss", np.nan) for r in records], dtype=float)


def thin(x: np.ndarray, y: np.ndarray, points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """At most `points` points (every k-th): a million-step curve drawn as a line."""
    k = max(1, len(x) // points)
    return x[::k], y[::k]


def sgd_then_gd(s: DynamicsSetup, stages: dict, path: Anchor) -> bool:
    if (1, None) not in stages:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    steps, loss = train_losses(stages[1, None])
    ax.plot(*thin(steps, loss), lw=0.6, label=f"SGD lr {s.stage1_lr:g} (minibatch loss)")
    if (2, None) in stages:
        gd_steps, gd_loss = train_losses(stages[2, None])
        ax.plot(*thin(gd_steps + (steps.max() if len(steps) else 0), gd_loss), lw=1, color="crimson",
                label=f"GD lr {s.gd_lr:g} (full-batch loss)")
    ax.set(xlabel="step", ylabel="training loss", yscale="log")
    ax.legend(fontsize=8)
    return close(plt, fig, path)


def panel_per_lr(lrs: list[float]):
    """pyplot, a figure with one panel per learning rate, and (panel, lr) pairs."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(lrs), figsize=(5 * len(lrs), 4), squeeze=False)
    return plt, fig, list(zip(axes[0], lrs))


def eigenvalues(s: DynamicsSetup, stages: dict, path: Anchor) -> bool:
    lrs = [lr for lr in s.lrs if (3, lr) in stages]
    if not lrs:
        return False
    plt, fig, panels = panel_per_lr(lrs)
    for ax, lr in panels:
        with np.load(plain_file(stages[3, lr] / "trajectory.npz")) as data:
            values = data["eigenvalues"]
        for k in range(values.shape[1]):
            ax.plot(np.arange(1, len(values) + 1), values[:, k], lw=0.8, label=f"λ{k + 1}")
        if 2 / lr < 3 * values.max():  # the stability edge, where it is in range
            ax.axhline(2 / lr, color="black", ls=":", lw=0.8, label="2 / lr")
        ax.set(title=f"lr {lr:g}", xlabel="SGD step", ylabel="eigenvalue of the minibatch Hessian")
        ax.legend(fontsize=7)
    return close(plt, fig, path)


def spread_over_steps(s: DynamicsSetup, stages: dict, path: Anchor) -> bool:
    lrs = [lr for lr in s.lrs if (4, lr) in stages and (2, None) in stages]  # the mean-weight model needs stage 2
    if not lrs:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for lr in lrs:
        losses = np.load(plain_file(stages[4, lr] / "losses.npy"))
        steps = np.arange(1, losses.shape[1] + 1)
        low, mid, high = np.nanquantile(losses, [0.05, 0.5, 0.95], axis=0)
        line, = axes[0].plot(steps, mid, lw=0.8, label=f"lr {lr:g} median")
        axes[0].fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        axes[1].plot(steps, np.nanstd(losses, axis=0, ddof=1), lw=0.8, color=line.get_color(), label=f"lr {lr:g}")
    axes[0].set(xlabel="step", ylabel="minibatch training loss (5-95% of runs)")
    axes[1].set(xlabel="step", ylabel="std over runs", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8)
    return close(plt, fig, path)


def gd_vs_sgd(s: DynamicsSetup, stages: dict, path: Anchor) -> bool:
    lrs = [lr for lr in s.lrs if (4, lr) in stages and (5, lr) in stages]
    if not lrs:
        return False
    plt, fig, panels = panel_per_lr(lrs)
    for ax, lr in panels:
        losses = np.load(plain_file(stages[4, lr] / "losses.npy"))
        ax.plot(np.arange(1, losses.shape[1] + 1), np.nanmean(losses, axis=0), lw=0.8,
                label=f"SGD: mean of {len(losses)} runs")
        gd_steps, gd_loss = train_losses(stages[5, lr])
        gd_lr = read_json(stages[5, lr] / "summary.json").get("gd_lr", lr)
        ax.plot(gd_steps, gd_loss, lw=1, color="crimson", label=f"GD lr {gd_lr:g}")
        ax.set(title=f"lr {lr:g}", xlabel="step", ylabel="training loss")
        ax.legend(fontsize=8)
    return close(plt, fig, path)


def histograms(frame: pd.DataFrame, summary: dict, lrs: list[float], path: Anchor) -> None:
    plt, fig, panels = panel_per_lr(lrs)
    for ax, lr in panels:
        values = frame[frame["lr"] == lr]["last_val_loss"]
        ax.hist(values, bins=30, color="tab:blue", alpha=0.8)
        ax.axvline(summary[f"lr={lr:g}"]["mean_weight_model_val_loss"], color="crimson", ls="--",
                   label="mean-weight model")
        ax.set(title=f"lr {lr:g}: std {values.std():.3g}", xlabel="validation loss after the last step", ylabel="runs")
        ax.legend(fontsize=8)
    close(plt, fig, path)


def close(plt, fig, path: Anchor) -> bool:
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return True


register_report("dynamics", build_dynamics_report, prepare=pending_rewrite,
                doc="stage 6 of the dynamics study: validation-loss spread and a figure per stage")
