"""SGD vs GD dynamics: a study of six stages per setup.

    trainlab dynamics --setup 1                                # a new study of every stage
    trainlab dynamics --setup 1 --set stage1_epochs=1 --set runs=50
    trainlab resume runs/dynamics-setup1-<stamp>              # after a kill: the unfinished stages
    trainlab dynamics --results-dir DIR --stage 4 --force     # stage 4 (and what depends on it) again

1 sgd          SGD from initialisation -> checkpoint.pt
2 gd           full-batch GD continued from stage 1 -> checkpoint.pt
3 hessian      for one learning rate, SGD steps from the GD checkpoint recording the parameters and
               the top Hessian eigenvalues of each minibatch loss -> trajectory.npz, trajectory.json
4 many-sgd     for one learning rate, R independent SGD runs from the GD checkpoint (seed + i),
               batched -> weights.npy, losses.npy, runs.json
5 gd-runs      for one learning rate, GD from the GD checkpoint (lr `default` or scaled by N/B)
6 val-loss     the report: the validation-loss distribution of stage 4 -> val_loss/ (CSV,
               summary.json, histograms) and report.md

Each of stages 1-5 (per learning rate for 3-5) is one trial of the study, a `dynamics` job that
runs after the trials whose checkpoint it starts from (stages/<index>/, with stage.json naming
it); stage 6 is the study's report. So the study runs in any executor, resumes after a kill
with `trainlab resume`, and `trainlab report` rebuilds stage 6. Every stage uses the setup's
task, data, sampler, dtype and device.
"""

import json
import logging
import shutil
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
from ..io import atomic_write_json, atomic_write_text
from ..options import Strict
from ..plugin import register_command, register_job, register_report
from ..report.plotting import pyplot, save_figure
from ..spec import load_spec, parse_set, set_path
from ..study import resume_study, run_study
from ..study.store import StudyStore
from .flags import Command, add_common, add_sets, add_workers, executor_of

log = logging.getLogger(__name__)

STAGES = {1: "sgd", 2: "gd", 3: "hessian", 4: "many-sgd", 5: "gd-runs", 6: "val-loss"}


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


def run_trial(spec: dict, folder: Path, sink) -> tuple[Trial, dict]:
    """Train a stage's trial into its folder; its final weights in checkpoint.pt."""
    trial = Trial(spec, sink=sink)
    summary = trial.run()
    torch.save(trial.arms[0].model.state_dict(), folder / "checkpoint.pt")
    return trial, summary


# ---------------------------------------------------------------- the stages, as jobs


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


class StageOptions(Strict):
    stage: int = Field(1, ge=1, le=5, description="1 sgd, 2 gd, 3 hessian, 4 many-sgd, 5 gd-runs")
    lr: float | None = Field(None, gt=0, description="stages 3-5: the learning rate")
    setup: dict = Field(default_factory=dict, description="the setup's fields (trainlab dynamics --setup N --set ...)")


class DynamicsStage:
    @staticmethod
    def check(spec: dict) -> None:
        setup = DynamicsSetup.model_validate(spec["job"]["setup"])
        trial_spec(setup, "sgd", setup.stage1_lr, steps=1)  # the task and plan resolve

    @staticmethod
    def run(spec: dict, context) -> dict:
        job = spec["job"]
        s, stage, lr = DynamicsSetup.model_validate(job["setup"]), job["stage"], job["lr"]
        start = next(iter(context.inputs.values()), None)  # the folder of the stage this one continues
        init = start / "checkpoint.pt" if start is not None else None
        folder = context.folder
        atomic_write_json(folder / "stage.json", {"stage": stage, "name": STAGES[stage], "lr": lr})
        if stage == 1:
            _, summary = run_trial(trial_spec(s, "sgd", s.stage1_lr, epochs=s.stage1_epochs), folder, context.sink)
        elif stage == 2:
            _, summary = run_trial(trial_spec(s, "gd", s.gd_lr, steps=s.gd_steps, init_from=init), folder, context.sink)
        elif stage == 3:
            summary = hessian_stage(s, lr, init, folder, context.sink)
        elif stage == 4:
            summary = ensemble_stage(s, lr, init, folder)
        else:
            size = Trial.inspect(trial_spec(s, "gd", 0.1, steps=1)).n_train
            scaled = lr * size / s.batch_size if s.gd_scaling == "N/B" else lr
            _, summary = run_trial(trial_spec(s, "gd", scaled, steps=s.gd_run_steps, init_from=init), folder,
                                   context.sink)
            summary = {**summary, "gd_lr": scaled, "scaling": s.gd_scaling}
        if not context.quiet:
            log.info(f"dynamics stage {stage} ({STAGES[stage]}{f', lr {lr:g}' if lr else ''}) done")
        return {"stage": stage, "name": STAGES[stage], "lr": lr, **summary}


def hessian_stage(s: DynamicsSetup, lr: float, init: Path, folder: Path, sink) -> dict:
    trial = Trial(trial_spec(s, "sgd", lr, steps=s.hessian_steps, init_from=init), sink=sink)
    hook = HessianTrajectory(s.hessian_top)
    trial.hooks.append(hook)
    summary = trial.run()
    final = torch.cat([p.detach().reshape(-1) for p in trial.arms[0].model.parameters()]).double().cpu().numpy()
    np.savez(folder / "trajectory.npz", params=np.stack([*hook.params, final]), eigenvalues=np.stack(hook.eigenvalues),
             lr=lr)
    method = "exact" if hook.params[0].size <= 1000 else "lanczos"
    atomic_write_json(folder / "trajectory.json", {"lr": lr, "method": method, "notes": trial.notes,
                                                   "hessian_vector_products": hook.products})
    return {**summary, "top_eigenvalue_first": float(hook.eigenvalues[0][0]),
            "top_eigenvalue_last": float(hook.eigenvalues[-1][0]), "method": method}


def ensemble_stage(s: DynamicsSetup, lr: float, init: Path, folder: Path) -> dict:
    spec = trial_spec(s, "sgd", lr, steps=s.run_steps, init_from=init)
    result = run_ensemble(spec, s.runs, record_steps=[s.run_steps], out_dir=folder)
    np.save(folder / "losses.npy", result.losses)
    atomic_write_json(folder / "runs.json", {
        "lr": lr, "seeds": result.seeds, "method": result.method, "sampler": s.sampler,
        "first": {k: v.tolist() for k, v in result.eval_first.items()},
        "last": {k: v.tolist() for k, v in result.eval_last.items()}})
    return {"runs": s.runs, "method": result.method, "last_val_loss_std": float(np.std(result.eval_last["loss"], ddof=1))}


register_job("dynamics", DynamicsStage, Options=StageOptions, doc="one stage of the SGD vs GD dynamics study")


def study_spec(s: DynamicsSetup, output_root: str, stages: list[int]) -> dict:
    """Stages 1 and 2, then stages 3-5 per learning rate (each after stage 2), as trials."""
    wanted = set(stages) | ({1, 2} if set(stages) & {3, 4, 5, 6} else set()) | ({1} if 2 in stages else set())
    wanted |= {4} if 6 in stages else set()
    points = []

    def add(stage, lr=None, after=()):
        points.append({"job.stage": stage, "job.lr": lr, "job.after": list(after)})
        return len(points) - 1

    first = add(1) if 1 in wanted else None
    second = add(2, after=[first]) if 2 in wanted else None
    for stage in (3, 4, 5):
        if stage in wanted:
            for lr in s.lrs:
                add(stage, lr, [second])
    return {"name": f"dynamics-setup{s.setup}", "seed": s.seed,
            "job": {"kind": "dynamics", "setup": s.model_dump(mode="json"), "stage": 1},
            "sweep": {"points": points},
            "output": {"root": output_root, "report": "dynamics", "trial_dir": "stages/{index:02d}"}}


# ---------------------------------------------------------------- stage 6: the report


def stage_trials(store: StudyStore) -> dict:
    """(stage, lr) -> the folder of that finished stage's trial."""
    found = {}
    for trial in store.meta.get("trials", []):
        folder = store.trial_dir(trial["index"])
        if (folder / "summary.json").exists():
            found[(trial["overrides"]["job.stage"], trial["overrides"]["job.lr"])] = folder
    return found


def build_dynamics_report(study_dir) -> Path:
    """Stage 6: the validation-loss distribution of the many-run stage, per learning rate."""
    store = StudyStore.open(study_dir)
    s = DynamicsSetup.model_validate(store.spec["job"]["setup"])
    stages = stage_trials(store)
    folder = store.root / "val_loss"
    lines = [f"# SGD vs GD dynamics, setup {s.setup}", "",
             f"- task `{s.task['name']}` ({s.dataset}), sampler {s.sampler}, {s.dtype}, batch {s.batch_size}, seed {s.seed}",
             f"- stages finished: {', '.join(f'{STAGES[k]}' + (f' lr {lr:g}' if lr else '') for k, lr in sorted(stages, key=lambda t: (t[0], t[1] or 0)))}",
             ""]
    lrs = [lr for lr in s.lrs if (4, lr) in stages]
    if not lrs:
        lines += ["The many-run stage has not finished: no validation-loss distribution yet.", ""]
        return atomic_write_text(store.root / "report.md", "\n".join(lines))
    folder.mkdir(exist_ok=True)
    rows, summary = [], {}
    for lr in lrs:
        runs_dir = stages[(4, lr)]
        runs = json.loads((runs_dir / "runs.json").read_text())
        for i, seed in enumerate(runs["seeds"]):
            rows.append({"lr": lr, "sampler": s.sampler, "run": i, "seed": seed,
                         "first_val_loss": runs["first"]["loss"][i], "last_val_loss": runs["last"]["loss"][i],
                         "first_val_accuracy": runs["first"]["accuracy"][i], "last_val_accuracy": runs["last"]["accuracy"][i]})
        last = np.array(runs["last"]["loss"])
        weights = np.load(runs_dir / "weights.npy", mmap_mode="r")
        mean_model = mean_weight_loss(s, stages[(2, None)] / "checkpoint.pt", lr, np.asarray(weights[:, -1]).mean(axis=0))
        summary[f"lr={lr:g}"] = {"sampler": s.sampler, "runs": len(last), "mean": float(last.mean()),
                                 "std": float(last.std(ddof=1)),
                                 "quantiles": {str(q): float(np.quantile(last, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
                                 "mean_weight_model_val_loss": mean_model,
                                 "weight_spread": float(np.asarray(weights[:, -1]).std(axis=0).mean())}
    frame = pd.DataFrame(rows)
    frame.to_csv(folder / "val_loss.csv", index=False)
    stds = {k: v["std"] for k, v in summary.items()}
    ordered = [summary[f"lr={lr:g}"]["std"] for lr in sorted(lrs)]
    summary["spread_grows_with_lr"] = bool(all(a < b for a, b in zip(ordered, ordered[1:])))
    summary["std_by_lr"] = stds
    atomic_write_json(folder / "summary.json", summary)
    histograms(frame, summary, lrs, folder / "histograms.png")
    lines += ["## Validation loss after the last step of each run", "",
              "| lr | runs | mean | std | 5% | 95% | mean-weight model |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {lr:g} | {summary[f'lr={lr:g}']['runs']} | {summary[f'lr={lr:g}']['mean']:.6g} | "
              f"{summary[f'lr={lr:g}']['std']:.4g} | {summary[f'lr={lr:g}']['quantiles']['0.05']:.6g} | "
              f"{summary[f'lr={lr:g}']['quantiles']['0.95']:.6g} | {summary[f'lr={lr:g}']['mean_weight_model_val_loss']:.6g} |"
              for lr in lrs]
    lines += ["", f"Spread grows with the learning rate: {summary['spread_grows_with_lr']}.", "",
              "![histograms](val_loss/histograms.png)", ""]
    return atomic_write_text(store.root / "report.md", "\n".join(lines))


def histograms(frame: pd.DataFrame, summary: dict, lrs: list[float], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(lrs), figsize=(5 * len(lrs), 4), squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        values = frame[frame["lr"] == lr]["last_val_loss"]
        ax.hist(values, bins=30, color="tab:blue", alpha=0.8)
        ax.axvline(summary[f"lr={lr:g}"]["mean_weight_model_val_loss"], color="crimson", ls="--",
                   label="mean-weight model")
        ax.set(title=f"lr {lr:g}: std {values.std():.3g}", xlabel="validation loss after the last step", ylabel="runs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def mean_weight_loss(s: DynamicsSetup, checkpoint: Path, lr: float, flat: np.ndarray) -> float:
    trial = Trial(trial_spec(s, "sgd", lr, steps=1, init_from=checkpoint))
    model = trial.arms[0].model
    torch.nn.utils.vector_to_parameters(torch.from_numpy(flat).to(next(model.parameters())), list(model.parameters()))
    return trial.evaluate_model(model)["loss"]


register_report("dynamics", build_dynamics_report, doc="stage 6 of the dynamics study: validation-loss spread")


# ---------------------------------------------------------------- the command


def arguments(parser) -> None:
    parser.add_argument("--setup", type=int, help="preset 1-8 (a new study)")
    parser.add_argument("--stage", type=int, nargs="+", choices=range(1, 7), metavar="K",
                        help="stages to run (default all; the stages they start from are included)")
    parser.add_argument("--results-dir", metavar="DIR", help="an existing dynamics study: run its unfinished stages, "
                        "or with --force run --stage K again")
    parser.add_argument("--force", action="store_true", help="with --results-dir: run --stage K and the stages "
                        "after it again, replacing their outputs whole")
    parser.add_argument("--output-root", default="runs", metavar="DIR")
    add_sets(parser, "change a setup field, e.g. --set stage1_epochs=1 --set runs=50")
    add_workers(parser)
    add_common(parser)


def run_command(args) -> int:
    executor = executor_of(args)
    if args.results_dir:
        if args.setup is not None or args.sets:
            raise UserError("--results-dir: the study keeps the settings it was made with; for other settings "
                            "(--setup, --set) start a new study (without --results-dir)")
        if args.force:
            if not args.stage:
                raise UserError("--force: name the stages to run again with --stage K")
            redo(StudyStore.open(args.results_dir), args.stage)
        print(resume_study(args.results_dir, quiet=args.quiet, executor=executor))
        return 0
    if args.setup is None:
        raise UserError("--setup: give a setup (1-8) for a new study, or --results-dir DIR for an existing one")
    if args.force:
        raise UserError("--force: only with --results-dir (a new study runs every stage it names anyway)")
    setup = setup_of(args.setup, args.sets)
    print(run_study(study_spec(setup, args.output_root, args.stage or [1, 2, 3, 4, 5, 6]), quiet=args.quiet,
                    executor=executor))
    return 0


DEPENDENTS = {1: {2, 3, 4, 5}, 2: {3, 4, 5}, 3: set(), 4: set(), 5: set(), 6: set()}


def redo(store: StudyStore, stages: list[int]) -> None:
    """Remove the outputs of `stages`, and of the stages that start from them, whole: the resume
    that follows runs them again from scratch, never mixing old files with new."""
    again = set(stages) | {d for stage in stages for d in DEPENDENTS[stage]}
    for trial in store.meta.get("trials", []):
        if trial["overrides"]["job.stage"] in again:
            shutil.rmtree(store.trial_dir(trial["index"]), ignore_errors=True)


register_command("dynamics", Command("SGD vs GD dynamics: six stages per setup (docs/dynamics.md)", arguments,
                                     run_command))
