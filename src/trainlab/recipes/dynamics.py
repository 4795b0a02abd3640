"""SGD vs GD dynamics: one pipeline of six stages per setup.

    trainlab dynamics --setup 1                     # every stage, skipping finished ones
    trainlab dynamics --setup 1 --stage 4 --force   # one stage again
    trainlab dynamics --setup 1 --set stage1_epochs=1 --set runs=50

1 sgd          SGD from initialisation -> stage1_sgd/checkpoint.pt
2 gd           full-batch GD continued from stage 1 -> stage2_gd/checkpoint.pt
3 hessian      for each learning rate, SGD steps from the GD checkpoint recording the parameters and
               the top Hessian eigenvalues of each minibatch loss -> stage3_hessian/lr_<lr>.npz
4 many-sgd     R independent SGD runs from the GD checkpoint (seed + i), batched -> stage4_runs/lr_<lr>/
5 gd-runs      GD from the GD checkpoint with learning rate `default` or scaled by N/B -> stage5_gd/
6 val-loss     validation-loss distribution of stage 4: CSV, summary.json, histograms -> stage6_val_loss/
Every stage uses the setup's task, data, sampler, dtype and device.
"""

import json
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, ValidationError

from ..curvature import HessianOperator, exact_hessian, top_eigenpairs
from ..engine import Hook, Trial
from ..engine.ensemble import run_ensemble
from ..errors import UserError, spec_error_from_pydantic
from ..io import atomic_write_json
from ..options import Strict
from ..plugin import register_command
from ..report.plotting import pyplot
from ..spec import load_spec, parse_set, set_path
from ..study.store import MetricsWriter
from .flags import Command, add_common, add_sets

STAGES = {1: "stage1_sgd", 2: "stage2_gd", 3: "stage3_hessian", 4: "stage4_runs", 5: "stage5_gd", 6: "stage6_val_loss"}


SIMILAR_DIGITS = [3, 5, 8]  # mnist_similar: digits that are easily confused


class DynamicsSetup(Strict):
    setup: int = 1
    dataset: Literal["mnist", "mnist_similar", "shakespeare"] = "mnist"
    task: dict = Field(default_factory=lambda: {"name": "mnist-mlp"})
    sampler: Literal["shuffle", "replacement"] = "shuffle"
    dtype: Literal["float32", "float64"] = "float64"
    device: str = "cpu"
    batch_size: int = Field(64, gt=0)
    seed: int = Field(0, ge=0)
    stage1_lr: float = Field(0.05, gt=0)
    stage1_epochs: float = Field(5, gt=0)
    gd_lr: float = Field(0.05, gt=0)
    gd_steps: int = Field(200, gt=0)
    lrs: list[float] = Field([0.001, 0.05], min_length=1)
    hessian_steps: int = Field(20, gt=0, description="stage 3: SGD steps per learning rate")
    hessian_top: int = Field(5, gt=0, description="stage 3: eigenvalues per minibatch Hessian")
    runs: int = Field(200, gt=1, description="stage 4: independent SGD runs per learning rate")
    run_steps: int = Field(300, gt=0, description="stage 4: steps of each run")
    gd_scaling: Literal["default", "N/B"] = Field("default", description="stage 5: lr, or lr x N / B")
    gd_run_steps: int = Field(300, gt=0)


SETUPS = {
    1: {"task": {"name": "mnist-mlp", "n_train": 6400}, "sampler": "shuffle", "dtype": "float64"},
    2: {"task": {"name": "mnist-mlp", "n_train": 6400}, "sampler": "replacement", "dtype": "float64"},
    3: {"dataset": "mnist_similar", "task": {"name": "mnist-mlp", "n_train": 6400, "n_test": 2800},
        "sampler": "shuffle", "dtype": "float64"},
    4: {"dataset": "mnist_similar", "task": {"name": "mnist-mlp", "n_train": 6400, "n_test": 2800},
        "sampler": "replacement", "dtype": "float64"},
    5: {"task": {"name": "mnist-cnn", "n_train": 6400}, "sampler": "shuffle", "dtype": "float32"},
    6: {"task": {"name": "mnist-cnn", "n_train": 6400}, "sampler": "replacement", "dtype": "float32"},
    7: {"dataset": "shakespeare", "task": {"name": "shakespeare-gpt"}, "sampler": "shuffle", "dtype": "float64",
        "stage1_lr": 0.5, "gd_lr": 0.5, "lrs": [0.01, 0.5]},
    8: {"dataset": "shakespeare", "task": {"name": "shakespeare-gpt"}, "sampler": "replacement", "dtype": "float64",
        "stage1_lr": 0.5, "gd_lr": 0.5, "lrs": [0.01, 0.5]},
}


def setup_of(number: int, sets: list[str]) -> DynamicsSetup:
    if number not in SETUPS:
        raise UserError(f"--setup {number}: allowed setups are {', '.join(map(str, SETUPS))}")
    data = {"setup": number, **json.loads(json.dumps(SETUPS[number]))}
    for assignment in sets:
        set_path(data, *parse_set(assignment))
    try:
        return DynamicsSetup.model_validate(data)
    except ValidationError as err:
        raise spec_error_from_pydantic(err, model=DynamicsSetup) from None


def task_of(s: DynamicsSetup) -> dict:
    """The setup's task; mnist_similar keeps only digits that look alike."""
    if s.dataset == "mnist_similar":
        return {**s.task, "classes": s.task.get("classes") or SIMILAR_DIGITS}
    return s.task


def trial_spec(s: DynamicsSetup, optimizer: str, lr: float, steps=None, epochs=None, init_from=None, seed=None,
               sampler=None) -> dict:
    return load_spec({"name": f"dynamics-setup{s.setup}", "seed": s.seed if seed is None else seed, "task": task_of(s),
                      "arms": [{"name": optimizer, "optimizer": optimizer, "lr": lr}],
                      "plan": {"steps": steps, "epochs": epochs, "batch_size": s.batch_size,
                               "sampler": sampler or s.sampler, "dtype": s.dtype, "device": s.device,
                               "eval_every": 10**9, "init_from": str(init_from) if init_from else None}})


def train_and_save(spec: dict, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    writer = MetricsWriter(folder / "metrics.jsonl")
    trial = Trial(spec, sink=writer)
    summary = trial.run()
    writer.close()
    arm = trial.arms[0]
    torch.save(arm.model.state_dict(), folder / "checkpoint.pt")
    atomic_write_json(folder / "summary.json", {**summary, "spec": spec})
    return summary


# ---------------------------------------------------------------- the stages


def stage1(s: DynamicsSetup, root: Path) -> None:
    train_and_save(trial_spec(s, "sgd", s.stage1_lr, epochs=s.stage1_epochs), root / STAGES[1])


def stage2(s: DynamicsSetup, root: Path) -> None:
    train_and_save(trial_spec(s, "gd", s.gd_lr, steps=s.gd_steps, init_from=need(root, 1)), root / STAGES[2])


class HessianTrajectory(Hook):
    """Before each update: the parameters and the top eigenvalues of that minibatch's loss."""

    def __init__(self, top: int):
        self.top, self.params, self.eigenvalues, self.products = top, [], [], 0

    def before_step(self, trial, arm, step):
        model = arm.model
        self.params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().cpu().numpy())
        op = HessianOperator(model, lambda m, x, y: trial.task.loss(m(x), y, opts=trial.options), [arm.batch])
        for note in op.notes:
            trial.note(note)
        if op.size <= 1000:
            values = np.linalg.eigvalsh(exact_hessian(op).double().cpu().numpy())[::-1][: self.top]
        else:
            values, _, _ = top_eigenpairs(op, self.top, tol=1e-8)
        self.eigenvalues.append(values)
        self.products += op.products


def stage3(s: DynamicsSetup, root: Path) -> None:
    folder = root / STAGES[3]
    folder.mkdir(parents=True, exist_ok=True)
    for lr in s.lrs:
        trial = Trial(trial_spec(s, "sgd", lr, steps=s.hessian_steps, init_from=need(root, 2)))
        hook = HessianTrajectory(s.hessian_top)
        trial.hooks.append(hook)
        trial.run()
        final = torch.cat([p.detach().reshape(-1) for p in trial.arms[0].model.parameters()]).double().cpu().numpy()
        np.savez(folder / f"lr_{lr:g}.npz", params=np.stack([*hook.params, final]),
                 eigenvalues=np.stack(hook.eigenvalues), lr=lr)
        atomic_write_json(folder / f"lr_{lr:g}.json", {"lr": lr, "method": "exact" if hook.params[0].size <= 1000
                                                        else "lanczos", "notes": trial.notes})
        progress(f"stage 3: lr {lr:g}: {s.hessian_steps} minibatch Hessians, top eigenvalue at the start "
                 f"{hook.eigenvalues[0][0]:.4g}, at the end {hook.eigenvalues[-1][0]:.4g}")


def stage4(s: DynamicsSetup, root: Path) -> None:
    for lr in s.lrs:
        folder = root / STAGES[4] / f"lr_{lr:g}"
        folder.mkdir(parents=True, exist_ok=True)
        spec = trial_spec(s, "sgd", lr, steps=s.run_steps, init_from=need(root, 2))
        result = run_ensemble(spec, s.runs, record_steps=[s.run_steps], out_dir=folder)
        np.save(folder / "losses.npy", result.losses)
        atomic_write_json(folder / "runs.json", {
            "lr": lr, "seeds": result.seeds, "method": result.method, "sampler": s.sampler,
            "first": {k: v.tolist() for k, v in result.eval_first.items()},
            "last": {k: v.tolist() for k, v in result.eval_last.items()}})
        progress(f"stage 4: lr {lr:g}: {s.runs} runs x {s.run_steps} steps ({result.method})")


def stage5(s: DynamicsSetup, root: Path) -> None:
    n = trial_spec(s, "gd", 0.1, steps=1)  # only for the training-set size
    size = Trial.inspect(n).n_train
    rows = []
    for lr in s.lrs:
        scaled = lr * size / s.batch_size if s.gd_scaling == "N/B" else lr
        summary = train_and_save(trial_spec(s, "gd", scaled, steps=s.gd_run_steps, init_from=need(root, 2)),
                                 root / STAGES[5] / f"lr_{lr:g}")
        arm = summary["arms"]["gd"]
        rows.append({"lr": lr, "gd_lr": scaled, "scaling": s.gd_scaling, "final_val_loss": arm["final_test_loss"],
                     "final_val_accuracy": arm["final_test_accuracy"], "diverged": arm["diverged"]})
    atomic_write_json(root / STAGES[5] / "summary.json", rows)


def stage6(s: DynamicsSetup, root: Path) -> None:
    plt = pyplot()

    folder = root / STAGES[6]
    folder.mkdir(parents=True, exist_ok=True)
    rows, summary = [], {}
    for lr in s.lrs:
        runs_dir = need_dir(root, 4) / f"lr_{lr:g}"
        runs = json.loads((runs_dir / "runs.json").read_text())
        for i, seed in enumerate(runs["seeds"]):
            rows.append({"lr": lr, "sampler": s.sampler, "run": i, "seed": seed,
                         "first_val_loss": runs["first"]["loss"][i], "last_val_loss": runs["last"]["loss"][i],
                         "first_val_accuracy": runs["first"]["accuracy"][i], "last_val_accuracy": runs["last"]["accuracy"][i]})
        last = np.array(runs["last"]["loss"])
        weights = np.load(runs_dir / "weights.npy", mmap_mode="r")
        mean_model = mean_weight_loss(s, root, lr, np.asarray(weights[:, -1]).mean(axis=0))
        summary[f"lr={lr:g}"] = {"sampler": s.sampler, "runs": len(last), "mean": float(last.mean()),
                                 "std": float(last.std(ddof=1)),
                                 "quantiles": {str(q): float(np.quantile(last, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
                                 "mean_weight_model_val_loss": mean_model,
                                 "weight_spread": float(np.asarray(weights[:, -1]).std(axis=0).mean())}
    frame = pd.DataFrame(rows)
    frame.to_csv(folder / "val_loss.csv", index=False)
    stds = {k: v["std"] for k, v in summary.items()}
    ordered = [summary[f"lr={lr:g}"]["std"] for lr in sorted(s.lrs)]
    summary["spread_grows_with_lr"] = bool(all(a < b for a, b in zip(ordered, ordered[1:])))
    summary["std_by_lr"] = stds
    atomic_write_json(folder / "summary.json", summary)
    fig, axes = plt.subplots(1, len(s.lrs), figsize=(5 * len(s.lrs), 4), squeeze=False)
    for ax, lr in zip(axes[0], s.lrs):
        values = frame[frame["lr"] == lr]["last_val_loss"]
        ax.hist(values, bins=30, color="tab:blue", alpha=0.8)
        ax.axvline(summary[f"lr={lr:g}"]["mean_weight_model_val_loss"], color="crimson", ls="--",
                   label="mean-weight model")
        ax.set(title=f"lr {lr:g}: std {values.std():.3g}", xlabel="validation loss after the last step", ylabel="runs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "histograms.png", dpi=100)
    plt.close(fig)
    progress("stage 6: " + "; ".join(f"{k}: std {v:.4g}" for k, v in stds.items())
             + f"; spread grows with lr: {summary['spread_grows_with_lr']}")


def mean_weight_loss(s: DynamicsSetup, root: Path, lr: float, flat: np.ndarray) -> float:
    trial = Trial(trial_spec(s, "sgd", lr, steps=1, init_from=need(root, 2)))
    model = trial.arms[0].model
    torch.nn.utils.vector_to_parameters(torch.from_numpy(flat).to(next(model.parameters())), list(model.parameters()))
    return trial.evaluate_model(model)["loss"]


# ---------------------------------------------------------------- the pipeline


def need(root: Path, stage: int) -> Path:
    path = root / STAGES[stage] / "checkpoint.pt"
    if not path.exists():
        raise UserError(f"stage {stage} has not run yet ({path} is missing); run it first")
    return path


def need_dir(root: Path, stage: int) -> Path:
    path = root / STAGES[stage]
    if not done(root, stage):
        raise UserError(f"stage {stage} has not run yet ({path} is missing); run it first")
    return path


def done(root: Path, stage: int) -> bool:
    marker = root / STAGES[stage] / ".done"
    return marker.exists()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


RUNNERS = {1: stage1, 2: stage2, 3: stage3, 4: stage4, 5: stage5, 6: stage6}


def run_pipeline(s: DynamicsSetup, root: Path, stages: list[int], force: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "setup.json", s.model_dump(mode="json"))
    for stage in stages:
        if done(root, stage) and not force:
            progress(f"stage {stage} ({STAGES[stage]}): outputs exist, skipped (--force runs it again)")
            continue
        progress(f"stage {stage} ({STAGES[stage]}) ...")
        (root / STAGES[stage]).mkdir(parents=True, exist_ok=True)
        (root / STAGES[stage] / ".done").unlink(missing_ok=True)
        RUNNERS[stage](s, root)
        (root / STAGES[stage] / ".done").write_text("")
    return root


# ---------------------------------------------------------------- the command


def arguments(parser) -> None:
    parser.add_argument("--setup", type=int, required=True, help="preset 1-8")
    parser.add_argument("--stage", type=int, nargs="+", choices=range(1, 7), metavar="K", help="stages to run (default all)")
    parser.add_argument("--force", action="store_true", help="run stages again even when their outputs exist")
    parser.add_argument("--output-root", default="runs", metavar="DIR")
    add_sets(parser, "change a setup field, e.g. --set stage1_epochs=1 --set runs=50")
    add_common(parser)


def run_command(args) -> int:
    setup = setup_of(args.setup, args.sets)
    root = Path(args.output_root) / f"dynamics-setup{args.setup}"
    print(run_pipeline(setup, root, args.stage or [1, 2, 3, 4, 5, 6], args.force))
    return 0


register_command("dynamics", Command("SGD vs GD dynamics: six stages per setup (docs/dynamics.md)", arguments, run_command))
