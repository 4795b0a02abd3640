"""Weights & Biases: one run per trial and arm, grouped by study, offline by default.

Offline runs need no account and no network: they are written under `<study>/wandb/`, and
`wandb sync <study>/wandb/offline-run-*` uploads them later. `mode: online` logs to your
W&B account directly (after `wandb login`). The run's config is the arm's hyperparameters;
its history the records by step; its summary the trial's final numbers. The report's figures
go into a run of their own (`report`)."""

from pathlib import Path
from typing import Literal

from ..options import Strict
from ..plugin import register_logger
from .base import Logger, PerArm, figures_of, run_name


class WandbOptions(Strict):
    mode: Literal["offline", "online"] = "offline"
    project: str | None = None  # default: the study's name
    entity: str | None = None


def start(logger: "WandbLogger", name: str, config: dict, job_type: str):
    import wandb
    return wandb.init(mode=logger.options.get("mode", "offline"), dir=str(logger.folder), name=name,
                      project=logger.options.get("project") or logger.spec.get("name", "trainlab"),
                      entity=logger.options.get("entity"), group=logger.root.name, job_type=job_type,
                      config=config, reinit="create_new",
                      settings=wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                              x_disable_meta=True, save_code=False))


class WandbRun:
    def __init__(self, run):
        self.run, self.step, self.pending = run, None, {}

    def scalars(self, numbers: dict[str, float], step: int) -> None:
        if self.step is not None and step != self.step:  # W&B wants one row per step: gather a step's records
            self.flush()
        self.step = step
        self.pending.update(numbers)

    def flush(self) -> None:
        if self.pending:
            self.run.log(self.pending, step=self.step)
            self.pending = {}

    def close(self, final: dict[str, float], failed: bool) -> None:
        self.flush()
        self.run.summary.update(final)
        self.run.finish(exit_code=1 if failed else 0)


class WandbLogger(Logger):
    def __init__(self, study_root: Path, spec: dict, options: dict):
        super().__init__(study_root, spec, options)
        self.folder = self.root  # W&B writes into <folder>/wandb/

    def open_trial(self, index: int, folder: Path, arms: dict[str, dict]) -> PerArm:
        self.place("wandb").mkdir()  # W&B writes below it: no link on the way
        for old in (self.folder / "wandb").glob(f"*/trial-{index:04d}.marker"):  # a rerun replaces the trial's runs
            (self.place("wandb") / old.parent.name).remove_tree()

        def open_run(arm: str, params: dict) -> WandbRun:
            run = start(self, run_name(index, arm), params, "trial")
            (self.place("wandb") / Path(run.dir).parent.name / f"trial-{index:04d}.marker").write_bytes(b"")
            return WandbRun(run)
        return PerArm(open_run, arms)

    def finish(self, files: list[Path]) -> None:
        import wandb
        self.place("wandb").mkdir()
        run = start(self, "report", {"study": str(self.root)}, "report")
        run.log({f.relative_to(self.root).as_posix(): wandb.Image(str(f)) for f in figures_of(files)}, step=0)
        run.finish()


register_logger("wandb", WandbLogger, Options=WandbOptions, requires={"wandb": "wandb"},
                doc="Weights & Biases runs (offline by default: no account, no network), grouped by study")
