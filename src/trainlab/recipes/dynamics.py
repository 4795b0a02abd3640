"""SGD vs GD dynamics: the researchers' study of six stages per setup.

    trainlab dynamics --setup 1                                # exp1 (MNIST) setup 1, a new study
    trainlab dynamics --experiment shakespeare --setup 2       # exp2 (Shakespeare) setup 2
    trainlab dynamics --setup 1 --set stage1_epochs=1 --set runs=50
    trainlab resume runs/dynamics-setup1-<stamp>              # after a kill: the unfinished stages
    trainlab dynamics --results-dir DIR --set runs=2000 --force   # other settings: changed stages replaced

1 sgd          SGD from initialisation -> checkpoint.pt
2 gd           full-batch GD continued from stage 1 -> checkpoint.pt
3 hessian      for one learning rate, SGD steps from the GD checkpoint recording the parameters and
               the top Hessian eigenvalues of each minibatch loss -> trajectory.npz, trajectory.json
4 many-sgd     for one learning rate, R independent SGD runs from the GD checkpoint (seed + i),
               batched -> weights.npy, losses.npy, buffers.npz, runs.json
5 gd-runs      for one learning rate, GD from the GD checkpoint (lr `default` or scaled by N/B)
6 val-loss     the report (dynamics_report.py): the validation-loss distribution of stage 4 and a
               figure per stage -> val_loss/ and report.md

Each of stages 1-5 (per learning rate for 3-5) is one trial of the study, a `dynamics` job that
runs after the trials whose checkpoint it starts from (stages/<index>/, with stage.json naming
it and the settings its outputs depend on); stage 6 is the study's report. So the study runs
in any executor, resumes after a kill with `trainlab resume`, and `trainlab report` rebuilds
stage 6. A rerun with other settings compares them with each finished stage's: a difference
is refused, or with --force the stages it touches are replaced whole.
"""

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from ..curvature import HessianOperator, exact_hessian, top_eigenpairs
from ..curvature.hessian import has_batchnorm
from ..engine import Hook, Trial
from ..engine.ensemble import flat_params, run_ensemble
from ..errors import UserError, spec_error_from_pydantic
from ..io import Anchor, anchor_at, read_json
from ..options import Strict
from ..plugin import register_command, register_job
from ..spec import load_spec, parse_set, set_path
from ..study import expand, resume_study, run_study
from ..study.runner import preflight
from ..study.store import StudyStore
from .flags import Command, add_common, add_sets, add_workers, executor_of

log = logging.getLogger(__name__)

STAGES = {1: "sgd", 2: "gd", 3: "hessian", 4: "many-sgd", 5: "gd-runs", 6: "val-loss"}


SIMILAR_DIGITS = [3, 5, 8]  # mnist_similar: digits that are easily confused
Dataset = Literal["mnist", "mnist_similar", "shakespeare"]


class DynamicsSetup(Strict):
    experiment: Literal["mnist", "shakespeare"] = "mnist"
    setup: int = 1
    train_data: Dataset = Field("mnist", description="mnist, mnist_similar (digits 3, 5, 8) or shakespeare")
    val_data: Dataset = Field("mnist", description="the held-out set: mnist (all ten digits), mnist_similar, shakespeare")
    task: dict = Field(default_factory=lambda: {"name": "mnist-mlp"})
    sampler: Literal["shuffle", "replacement"] = "shuffle"
    dtype: Literal["float32", "float64"] = "float64"
    device: str = "cpu"
    batch_size: int = Field(64, gt=0)
    seed: int = Field(42, ge=0)
    stage1_lr: float = Field(0.1, gt=0)
    stage1_epochs: float = Field(10000, gt=0)
    stage1_sampler: Literal["shuffle", "replacement"] = Field(
        "shuffle", description="stage 1's sampler (the researchers' stage 1 always shuffles)")
    gd_lr: float = Field(0.1, gt=0)
    gd_steps: int = Field(10000, gt=0, description="stage 2: full-batch steps (one per epoch)")
    lrs: list[float] = Field([0.05, 0.01, 0.005, 0.001], min_length=1)
    hessian_steps: int = Field(1000, gt=0, description="stage 3: SGD steps per learning rate")
    hessian_top: int = Field(5, gt=0, description="stage 3: eigenvalues per minibatch Hessian")
    hessian_method: Literal["lanczos", "exact"] = Field("lanczos", description="stage 3: top-k by Lanczos, or the "
                                                                               "exact Hessian")
    runs: int = Field(1000, gt=1, description="stage 4: independent SGD runs per learning rate")
    run_steps: int = Field(1111, gt=0, description="stage 4: steps of each run")
    trajectory_steps: list[int] = Field([], description="stage 4: steps at which every run's weights are kept "
                                                        "besides the last")
    gd_scaling: Literal["default", "N/B"] = Field("default", description="stage 5: lr, or lr x N / B")
    gd_run_steps: int = Field(1111, gt=0)

    @model_validator(mode="after")
    def _consistent(self):
        text = {self.train_data == "shakespeare", self.val_data == "shakespeare"}
        if len(text) > 1:
            raise ValueError("train_data and val_data: shakespeare trains and validates on text only")
        language = self.task.get("name") == "shakespeare-gpt"
        if language != (self.train_data == "shakespeare") and self.task.get("name") in ("mnist-mlp", "mnist-cnn",
                                                                                          "shakespeare-gpt"):
            raise ValueError(f"task.name: {self.task.get('name')} does not train on {self.train_data}")
        if len(set(self.lrs)) != len(self.lrs):
            raise ValueError("lrs: each learning rate once")
        if any(not 1 <= step <= self.run_steps for step in self.trajectory_steps):
            raise ValueError(f"trajectory_steps: every step must lie in 1..run_steps ({self.run_steps})")
        return self


# The researchers' MNIST: the first 6,400 training and test digits, scaled to [0, 1], not standardised.
MLP = {"name": "mnist-mlp", "n_train": 6400, "n_test": 6400, "normalize": False}
CNN = {"name": "mnist-cnn", "n_train": 6400, "n_test": 6400, "normalize": False, "activation": "relu"}
EXP1 = {"experiment": "mnist", "train_data": "mnist", "val_data": "mnist", "task": MLP, "dtype": "float64",
        "seed": 42, "batch_size": 64, "stage1_lr": 0.1, "gd_lr": 0.1, "stage1_epochs": 10000, "gd_steps": 10000,
        "hessian_steps": 1000, "runs": 1000, "run_steps": 1111, "gd_run_steps": 1111, "lrs": [0.1, 0.01]}
EXP2 = {"experiment": "shakespeare", "train_data": "shakespeare", "val_data": "shakespeare",
        "task": {"name": "shakespeare-gpt"}, "dtype": "float32", "seed": 42, "batch_size": 64, "stage1_lr": 0.01,
        "gd_lr": 0.01, "stage1_epochs": 10000, "gd_steps": 10000, "hessian_steps": 1000, "run_steps": 1111,
        "gd_run_steps": 1111}
SHORT = {"stage1_epochs": 1000, "gd_steps": 1000}
# The researchers' setups (exp1 on MNIST, exp2 on Shakespeare); docs/dynamics.md has the table.
SETUPS = {
    "mnist": {
        1: {**EXP1, "sampler": "shuffle", "lrs": [0.05, 0.01, 0.005, 0.001]},
        2: {**EXP1, "sampler": "replacement", "lrs": [0.05, 0.01, 0.005, 0.001]},
        3: {**EXP1, **SHORT, "task": CNN, "sampler": "shuffle"},
        4: {**EXP1, **SHORT, "task": CNN, "train_data": "mnist_similar", "sampler": "replacement"},
        6: {**EXP1, **SHORT, "sampler": "replacement"},
        7: {**EXP1, "sampler": "replacement", "dtype": "float32"},
        8: {**EXP1, "sampler": "shuffle", "dtype": "float32"},
    },
    "shakespeare": {
        1: {**EXP2, "sampler": "shuffle", "lrs": [0.001], "runs": 10},
        2: {**EXP2, "sampler": "replacement", "lrs": [0.01], "runs": 1000},
    },
}
ABSENT = {("mnist", 5): "the researchers' exp1 has no setup 5 (their setups are 1-4 and 6-8)"}


def setup_of(experiment: str, number: int, sets: list[str], base: dict | None = None) -> DynamicsSetup:
    """A setup's defaults (or `base`, a stored setup) with --set changes applied."""
    if base is None:
        table = SETUPS.get(experiment)
        if table is None:
            raise UserError(f"--experiment {experiment}: allowed experiments are {', '.join(SETUPS)}")
        if number not in table:
            why = ABSENT.get((experiment, number), "")
            raise UserError(f"--setup {number}: allowed setups of experiment {experiment} are "
                            f"{', '.join(map(str, table))}{f' ({why})' if why else ''}")
        base = {"setup": number, **table[number]}
    data = json.loads(json.dumps(base))
    for assignment in sets:
        set_path(data, *parse_set(assignment))
    try:
        return DynamicsSetup.model_validate(data)
    except ValidationError as err:
        raise spec_error_from_pydantic(err, model=DynamicsSetup) from None


def task_of(s: DynamicsSetup) -> dict:
    """The setup's task: mnist_similar keeps only digits that look alike, on either side."""
    if s.train_data == "shakespeare":
        return s.task
    train = SIMILAR_DIGITS if s.train_data == "mnist_similar" else None
    held_out = SIMILAR_DIGITS if s.val_data == "mnist_similar" else list(range(10))
    task = {**s.task, "classes": s.task.get("classes") or train}
    # all ten digits is the default anyway unless training keeps fewer
    default = None if not task["classes"] and s.val_data == "mnist" else held_out
    return {**task, "test_classes": s.task.get("test_classes") or default}


def study_name(s: DynamicsSetup) -> str:
    return f"dynamics-setup{s.setup}" if s.experiment == "mnist" else f"dynamics-{s.experiment}-setup{s.setup}"


def trial_spec(s: DynamicsSetup, optimizer: str, lr: float, steps=None, epochs=None, init_from=None, seed=None,
               sampler=None) -> dict:
    return load_spec({"name": study_name(s), "seed": s.seed if seed is None else seed, "task": task_of(s),
                      "arms": [{"name": optimizer, "optimizer": optimizer, "lr": lr}],
                      "plan": {"steps": steps, "epochs": epochs, "batch_size": s.batch_size,
                               "sampler": sampler or s.sampler, "dtype": s.dtype, "device": s.device,
                               "eval_every": 10**9, "init_from": str(init_from) if init_from else None}})


# What each stage's outputs depend on: a rerun compares these fields with the stored ones.
COMMON = ("experiment", "train_data", "val_data", "task", "dtype", "device", "batch_size", "seed")
STAGE_FIELDS = {1: COMMON + ("stage1_sampler", "stage1_lr", "stage1_epochs"),
                2: ("gd_lr", "gd_steps"),
                3: ("sampler", "hessian_steps", "hessian_top", "hessian_method"),
                4: ("sampler", "runs", "run_steps", "trajectory_steps"),
                5: ("gd_scaling", "gd_run_steps")}
BEFORE = {1: (), 2: (1,), 3: (1, 2), 4: (1, 2), 5: (1, 2)}  # the stages a stage starts from


def stage_settings(s: DynamicsSetup, stage: int) -> dict:
    """The fields a stage's outputs depend on, with those of the stages it starts from."""
    values = s.model_dump(mode="json")
    return {name: values[name] for k in (*BEFORE[stage], stage) for name in STAGE_FIELDS[k]}


def run_trial(spec: dict, folder: Anchor | Path, sink, progress=None, hooks=()) -> tuple[Trial, dict]:
    """Train a stage's trial into its folder; its final weights (and buffers) in checkpoint.pt."""
    trial = Trial(spec, sink=sink, progress=progress, hooks=list(hooks))
    if progress is not None:
        progress.total = trial.total_steps
    summary = trial.run()
    (anchor_at(folder) / "checkpoint.pt").save_torch(trial.arms[0].model.state_dict())
    return trial, summary


# ---------------------------------------------------------------- the stages, as jobs


class HessianTrajectory(Hook):
    """Before each update: the parameters and the top eigenvalues of that minibatch's loss."""

    def __init__(self, top: int, method: str):
        self.top, self.method, self.params, self.eigenvalues, self.products = top, method, [], [], 0
        self.notes = []

    def before_step(self, trial, arm, step):
        model = arm.model
        self.params.append(flat_params(model))
        op = HessianOperator(model, lambda m, x, y: trial.task.loss(m(x), y, opts=trial.options), [arm.batch])
        self.notes = op.notes
        if self.method == "exact":
            values = np.linalg.eigvalsh(exact_hessian(op).double().cpu().numpy())[::-1][: self.top]
        else:
            values, _, _ = top_eigenpairs(op, min(self.top, op.size), tol=1e-8, seed=step)
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
        Trial.inspect(trial_spec(setup, "sgd", setup.stage1_lr, steps=1))  # data, device and model, not trained

    @staticmethod
    def run(spec: dict, context) -> dict:
        job = spec["job"]
        s, stage, lr = DynamicsSetup.model_validate(job["setup"]), job["stage"], job["lr"]
        start = next(iter(context.inputs.values()), None)  # the folder of the stage this one continues
        init = start / "checkpoint.pt" if start is not None else None
        folder = context.place or anchor_at(context.folder)  # written through: nothing planted takes it elsewhere
        bar = context.progress
        if stage == 1:
            _, summary = run_trial(trial_spec(s, "sgd", s.stage1_lr, epochs=s.stage1_epochs,
                                              sampler=s.stage1_sampler), folder, context.sink, bar)
        elif stage == 2:
            _, summary = run_trial(trial_spec(s, "gd", s.gd_lr, steps=s.gd_steps, init_from=init), folder,
                                   context.sink, bar)
        elif stage == 3:
            summary = hessian_stage(s, lr, init, folder, context.sink, bar)
        elif stage == 4:
            summary = ensemble_stage(s, lr, init, folder, bar)
        else:
            size = Trial.inspect(trial_spec(s, "gd", 0.1, steps=1)).n_train
            scaled = lr * size / s.batch_size if s.gd_scaling == "N/B" else lr
            _, summary = run_trial(trial_spec(s, "gd", scaled, steps=s.gd_run_steps, init_from=init), folder,
                                   context.sink, bar)
            summary = {**summary, "gd_lr": scaled, "scaling": s.gd_scaling}
        # written last: a stage is compared with a rerun's settings only once it has finished
        (folder / "stage.json").write_json({"stage": stage, "name": STAGES[stage], "lr": lr,
                                            "settings": stage_settings(s, stage)})
        if not context.quiet:
            log.info(f"dynamics stage {stage} ({STAGES[stage]}{f', lr {lr:g}' if lr else ''}) done")
        return {"stage": stage, "name": STAGES[stage], "lr": lr, **summary}


def hessian_stage(s: DynamicsSetup, lr: float, init: Path, folder: Anchor | Path, sink, progress=None) -> dict:
    folder = anchor_at(folder)
    hook = HessianTrajectory(s.hessian_top, s.hessian_method)
    trial, summary = run_trial(trial_spec(s, "sgd", lr, steps=s.hessian_steps, init_from=init), folder, sink,
                               progress, hooks=[hook])
    model = trial.arms[0].model
    trajectory = {"params": np.stack([*hook.params, flat_params(model)]), "eigenvalues": np.stack(hook.eigenvalues),
                  "lr": lr}
    (folder / "trajectory.npz").write_with(lambda fh: np.savez(fh, **trajectory))
    batchnorm = "eval (running statistics)" if has_batchnorm(model) else "none"
    (folder / "trajectory.json").write_json({
        "lr": lr, "method": s.hessian_method, "top": s.hessian_top, "batchnorm": batchnorm,
        "notes": [*hook.notes, *trial.notes], "hessian_vector_products": hook.products})
    return {**summary, "top_eigenvalue_first": float(hook.eigenvalues[0][0]),
            "top_eigenvalue_last": float(hook.eigenvalues[-1][0]), "method": s.hessian_method,
            "batchnorm": batchnorm}


def ensemble_stage(s: DynamicsSetup, lr: float, init: Path, folder: Anchor | Path, progress=None) -> dict:
    folder = anchor_at(folder)
    spec = trial_spec(s, "sgd", lr, steps=s.run_steps, init_from=init)
    steps = sorted({*s.trajectory_steps, s.run_steps})
    result = run_ensemble(spec, s.runs, record_steps=steps, out_dir=folder, progress=progress)
    (folder / "losses.npy").write_with(lambda fh: np.save(fh, result.losses))
    if result.buffers:  # BatchNorm running statistics of every run after its last step
        (folder / "buffers.npz").write_with(lambda fh: np.savez(fh, **result.buffers))
    (folder / "runs.json").write_json({
        "lr": lr, "seeds": result.seeds, "method": result.method, "sampler": s.sampler, "record_steps": steps,
        "buffers": sorted(result.buffers),
        "first": {k: v.tolist() for k, v in result.eval_first.items()},
        "last": {k: v.tolist() for k, v in result.eval_last.items()}})
    return {"runs": s.runs, "method": result.method, "last_val_loss_std": float(np.std(result.eval_last["loss"], ddof=1))}


register_job("dynamics", DynamicsStage, Options=StageOptions, doc="one stage of the SGD vs GD dynamics study")


def study_points(s: DynamicsSetup, stages: list[int]) -> list[tuple[int, float | None]]:
    """(stage, lr) of every trial: stages 1 and 2, then stages 3-5 per learning rate."""
    wanted = set(stages) | ({1, 2} if set(stages) & {3, 4, 5, 6} else set()) | ({1} if 2 in stages else set())
    wanted |= {4} if 6 in stages else set()
    points = [(stage, None) for stage in (1, 2) if stage in wanted]
    return points + [(stage, lr) for stage in (3, 4, 5) if stage in wanted for lr in s.lrs]


def study_spec(s: DynamicsSetup, output_root: str, stages: list[int]) -> dict:
    points = study_points(s, stages)
    second = points.index((2, None)) if (2, None) in points else None
    rows = [{"job.stage": stage, "job.lr": lr,
             "job.after": [] if stage == 1 else [points.index((1, None))] if stage == 2 else [second]}
            for stage, lr in points]
    return {"name": study_name(s), "seed": s.seed,
            "job": {"kind": "dynamics", "setup": s.model_dump(mode="json"), "stage": 1},
            "sweep": {"points": rows},
            "output": {"root": output_root, "report": "dynamics", "trial_dir": "stages/{index:02d}"}}


# ---------------------------------------------------------------- the command


def arguments(parser) -> None:
    parser.add_argument("--experiment", choices=sorted(SETUPS), help="mnist (the default) or shakespeare")
    parser.add_argument("--setup", type=int, help="the researchers' setup: mnist 1-4, 6-8; shakespeare 1-2 "
                                                  "(docs/dynamics.md)")
    parser.add_argument("--stage", type=int, nargs="+", choices=range(1, 7), metavar="K",
                        help="stages to run (default all; the stages they start from are included)")
    parser.add_argument("--results-dir", metavar="DIR", help="an existing dynamics study: run its unfinished stages; "
                        "other settings (--setup, --set) must match what its stages ran with, unless --force")
    parser.add_argument("--force", action="store_true", help="with --results-dir: replace whole the stages whose "
                        "settings change, and --stage K (with the stages that start from them)")
    parser.add_argument("--output-root", default="runs", metavar="DIR")
    add_sets(parser, "change a setup field, e.g. --set stage1_epochs=1 --set runs=50")
    add_workers(parser)
    add_common(parser)


def describe(s: DynamicsSetup) -> str:
    """The resolved settings, one per line, as the docs' table lists them."""
    lines = [f"dynamics: experiment {s.experiment}, setup {s.setup}"]
    lines += [f"  {name}: {json.dumps(value)}" for name, value in s.model_dump(mode="json").items()
              if name not in ("experiment", "setup")]
    return "\n".join(lines)


def run_command(args) -> int:
    executor = executor_of(args)
    if args.results_dir:
        store = StudyStore.open(args.results_dir)
        if (store.spec.get("job") or {}).get("kind") != "dynamics":
            raise UserError(f"--results-dir: {args.results_dir!r} is not a dynamics study")
        if args.force and not (args.stage or args.setup is not None or args.sets or args.experiment):
            raise UserError("--force: name the stages to run again with --stage K, or give other settings with --set")
        rerun_with(store, args)
        print(resume_study(args.results_dir, quiet=args.quiet, executor=executor))
        return 0
    if args.setup is None:
        raise UserError("--setup: give a setup (mnist 1-4, 6-8; shakespeare 1-2) for a new study, or --results-dir "
                        "DIR for an existing one")
    if args.force:
        raise UserError("--force: only with --results-dir (a new study runs every stage it names anyway)")
    setup = setup_of(args.experiment or "mnist", args.setup, args.sets)
    if not args.quiet:
        print(describe(setup), file=sys.stderr)
    print(run_study(study_spec(setup, args.output_root, args.stage or [1, 2, 3, 4, 5, 6]), quiet=args.quiet,
                    executor=executor))
    return 0


DEPENDENTS = {1: {2, 3, 4, 5}, 2: {3, 4, 5}, 3: set(), 4: set(), 5: set(), 6: set()}


def redo(store: StudyStore, stages: list[int]) -> None:
    """Remove the outputs of `stages`, and of the stages that start from them, whole: the resume
    that follows runs them again from scratch, never mixing old files with new."""
    again = set(stages) | {d for stage in stages for d in DEPENDENTS[stage]}
    folders = [store.trial_place(t["index"]) for t in store.meta.get("trials", []) if t["overrides"]["job.stage"] in again]
    for folder in folders:  # unfinished first, all of them: a kill midway never leaves a stage on a removed one
        (folder / "summary.json").unlink()
    for folder in folders:
        folder.remove_tree()  # links inside are removed, never followed


def stored_stages(store: StudyStore) -> dict:
    """(stage, lr) -> (folder, settings) of every finished stage."""
    found = {}
    for trial in store.meta.get("trials", []):
        folder = store.trial_dir(trial["index"])
        if not store.finished_index(trial["index"]):
            continue
        try:
            record = read_json(folder / "stage.json")
        except (OSError, ValueError):
            record = {}  # finished, but its settings unknown: it counts as changed
        settings = record.get("settings") if isinstance(record, dict) else None
        found[(trial["overrides"]["job.stage"], trial["overrides"]["job.lr"])] = (folder, settings)
    return found


def rerun_with(store: StudyStore, args) -> None:
    """Prepare an existing study for the settings and stages asked now. Finished stages whose
    settings differ are refused without --force; with it they (and the stages after them) are
    replaced whole, stages of learning rates no longer asked for are removed, and matching
    stages are kept. Stages the study does not have yet (--stage K) are added."""
    with store.lock(), rewrite_errors(store):
        finish_respec(store)  # one that a kill interrupted
    stored = stored_setup(store)
    if args.setup is not None or args.experiment:
        base = None
        experiment, number = args.experiment or stored.experiment, args.setup if args.setup is not None else stored.setup
    else:
        base, experiment, number = stored.model_dump(mode="json"), stored.experiment, stored.setup
    wanted = setup_of(experiment, number, args.sets, base)
    again = set(args.stage or []) if args.force else set()
    planned = [(t["overrides"]["job.stage"], t["overrides"]["job.lr"]) for t in store.meta.get("trials", [])]
    stages = sorted({stage for stage, _ in planned} | set(args.stage or []))
    points = study_points(wanted, stages)
    with store.lock():
        found = stored_stages(store)
        changed = [(key, folder, settings) for key, (folder, settings) in found.items()
                   if settings != stage_settings(wanted, key[0]) or key not in points]
        if changed and not args.force:
            raise UserError(f"--results-dir: {conflict(wanted, changed)}; for these settings start a new study "
                            "(without --results-dir), or add --force to replace those stages")
        if wanted.model_dump() == stored.model_dump() and not changed and planned == points:
            redo(store, sorted(again))
            return
        spec = load_spec(study_spec(wanted, store.spec["output"]["root"], stages))
        preflight(expand(spec))  # the new settings work before anything finished is removed
        keep = {key: folder for key, (folder, settings) in found.items()
                if (key, folder, settings) not in changed and not again & {key[0], *BEFORE[key[0]]}}
        with rewrite_errors(store):
            respec(store, spec, keep)


@contextlib.contextmanager
def rewrite_errors(store: StudyStore):
    """A full disk or a permission stops a rewrite in one line; its journal finishes it later."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"--results-dir: rewriting {str(store.root)!r} stopped ({exc.strerror or exc}); it is "
                        f"journaled in {JOURNAL}: run the same command again once that is fixed") from None


def pending_rewrite(store: StudyStore, quiet: bool = True) -> None:
    """Before any stage trains (every executor) and before the report: a rewrite a kill
    interrupted holds finished stages in .respec/, so nothing may run until it is finished."""
    if (store.root / JOURNAL).exists():
        raise UserError(f"an interrupted --force rewrite of {str(store.root)!r} is pending; finish it with "
                        f"trainlab dynamics --results-dir {str(store.root)!r}")


def stored_setup(store: StudyStore) -> DynamicsSetup:
    try:
        return DynamicsSetup.model_validate(store.spec["job"]["setup"])
    except ValidationError:
        raise UserError(f"{str(store.root)!r} was made by an older trainlab whose dynamics settings this one cannot "
                        "read; start a new study") from None


def conflict(wanted: DynamicsSetup, changed: list) -> str:
    """One line: the first finished stage that differs, and how."""
    new = wanted.model_dump(mode="json")
    (stage, lr), _, settings = min(changed, key=lambda item: (item[0][0], item[0][1] or 0))
    where = f"stage {stage} ({STAGES[stage]}{f', lr {lr:g}' if lr else ''})"
    if settings is None:
        return f"{where} ran before stages recorded their settings"
    for name, value in settings.items():
        if new.get(name) != value:
            return f"{where} ran with {name}={json.dumps(value)}, asked {name}={json.dumps(new.get(name))}"
    return f"{where} ran with lr {lr:g}, which lrs={json.dumps(new['lrs'])} drops"


JOURNAL = ".respec.json"  # a pending rewrite of the study: its new meta and the stages it keeps


def respec(store: StudyStore, spec: dict, keep: dict) -> None:
    """Rewrite the study for `spec`: stages in `keep` move to their new trial folders (their
    summaries re-keyed to the new plans), every other stage folder is removed whole. The plan
    is journaled first, so a kill anywhere leaves it to be finished, never half-done."""
    plans = {(p.overrides["job.stage"], p.overrides["job.lr"]): p for p in expand(spec)}
    meta = {**store.meta, "spec": spec, "trials": [p.describe() for p in plans.values()]}
    moves = [[str(folder.relative_to(store.root)), plans[key].index] for key, folder in keep.items()]
    store.place(".respec").remove_tree()  # a leftover must never stand in for a stage
    store.write_json(JOURNAL, {"phase": "staging", "meta": meta, "moves": moves})
    finish_respec(store)


def finish_respec(store: StudyStore) -> None:
    """Carry out a journaled rewrite (again after a kill: every step can be repeated)."""
    journal_path = store.root / JOURNAL
    if not journal_path.exists():
        return
    journal = read_json(journal_path)
    staging = store.place(".respec")  # every move and removal below stays inside the study, through no link
    target = StudyStore(store.root, journal["meta"])
    if journal["phase"] == "staging":
        staging.mkdir()
        plans = {plan.index: plan for plan in expand(journal["meta"]["spec"])}
        for old, index in journal["moves"]:
            staged = staging / str(index)
            if store.place(old).path.exists() and not staged.path.exists():
                store.place(old).move_to(staged)
            if (staged.path / "summary.json").exists():  # re-keyed while staged: never placed with an old key
                plan = plans[index]
                summary = read_json(staged.path / "summary.json")
                (staged / "config.json").write_json({**plan.describe(), "spec": plan.spec})
                (staged / "summary.json").write_json({**summary, "index": index, "key": plan.key})
        for name in store.place("stages").names():
            (store.place("stages") / name).remove_tree()
        store.save_meta(journal["meta"])  # signed, as every study.json trainlab writes
        journal["phase"] = "placing"
        store.write_json(JOURNAL, journal)
    for _, index in journal["moves"]:
        staged, place = staging / str(index), target.trial_place(index)
        if staged.path.exists():
            place.remove_tree()  # while a stage waits staged, its place holds only a refused attempt
            staged.move_to(place)
    store.meta = journal["meta"]
    staging.remove_tree()
    store.place(JOURNAL).unlink()


register_command("dynamics", Command("SGD vs GD dynamics: six stages per setup (docs/dynamics.md)", arguments,
                                     run_command))
