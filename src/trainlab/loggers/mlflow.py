"""MLflow: an experiment per study, a parent run for the study, one child run per trial and arm.

By default the tracking store is an SQLite file in the study (`mlflow.db`, artifacts in
`mlartifacts/`): `mlflow ui --backend-store-uri sqlite:///runs/<study>/mlflow.db` shows it.
`tracking_uri` sends the runs to a tracking server instead (what a Ray cluster without a shared
filesystem needs). Each run has the arm's hyperparameters as params and the records as
metrics by step; the parent run gets the report and its figures as artifacts."""

import time
from pathlib import Path

from ..io import read_json
from ..options import Strict
from ..plugin import register_logger
from .base import Logger, PerArm, run_name

BATCH = 1000  # MLflow's log_batch takes at most 1000 metrics (and 100 params) per call
PUSH_EVERY_S = 2.0


class MlflowOptions(Strict):
    tracking_uri: str | None = None  # default: sqlite:///<study>/mlflow.db
    experiment: str | None = None  # default: the study's folder name


def client(uri: str):
    import logging

    from mlflow.tracking import MlflowClient
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store setup talks at INFO (set after its import)
    return MlflowClient(tracking_uri=uri)


class MlflowRun:
    def __init__(self, mlflow, run_id: str, params: dict):
        from mlflow.entities import Param
        self.mlflow, self.run_id, self.pending, self.pushed = mlflow, run_id, [], time.monotonic()
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            mlflow.log_batch(run_id, params=items[start:start + 100])

    def scalars(self, numbers: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.pending += [Metric(tag, value, now, step) for tag, value in numbers.items()]
        if len(self.pending) >= BATCH or time.monotonic() - self.pushed > PUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            self.mlflow.log_batch(self.run_id, metrics=self.pending[:BATCH])
            self.pending = self.pending[BATCH:]
        self.pushed = time.monotonic()

    def close(self, final: dict[str, float], failed: bool) -> None:
        self.scalars(final, 0)
        self.flush()
        self.mlflow.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class MlflowLogger(Logger):
    """The experiment and the study's parent run are made once, in the driver (`prepare`), and
    recorded in loggers/mlflow.json so every worker logs under them."""

    def __init__(self, study_root: Path, spec: dict, options: dict):
        super().__init__(study_root, spec, options)
        self.uri = options.get("tracking_uri") or f"sqlite:///{self.root.resolve() / 'mlflow.db'}"
        self.record = self.root / "loggers" / "mlflow.json"

    def prepare(self) -> None:
        mlflow = client(self.uri)
        name = self.options.get("experiment") or self.root.name
        found = mlflow.get_experiment_by_name(name)
        experiment = found.experiment_id if found else mlflow.create_experiment(
            name, artifact_location=(self.root.resolve() / "mlartifacts").as_uri()
            if self.uri.startswith("sqlite:") else None)
        known = read_json(self.record) if self.record.exists() else {}
        if known.get("experiment") != experiment or known.get("uri") != self.uri:
            parent = mlflow.create_run(experiment, run_name=self.root.name, tags={"trainlab.study": str(self.root)})
            self.place("loggers/mlflow.json").write_json({"uri": self.uri, "experiment": experiment,
                                                          "parent": parent.info.run_id})

    def open_trial(self, index: int, folder: Path, arms: dict[str, dict]) -> PerArm:
        known = read_json(self.record)
        mlflow = client(known["uri"])
        found = mlflow.search_runs([known["experiment"]], f"tags.`trainlab.trial` = '{index}'")
        for run in found:  # a rerun (after a kill, or an export) replaces the trial's runs
            mlflow.delete_run(run.info.run_id)

        def open_run(arm: str, params: dict) -> MlflowRun:
            run = mlflow.create_run(known["experiment"], run_name=run_name(index, arm),
                                    tags={"mlflow.parentRunId": known["parent"], "trainlab.trial": str(index),
                                          "trainlab.arm": arm})
            return MlflowRun(mlflow, run.info.run_id, params)
        return PerArm(open_run, arms)

    def finish(self, files: list[Path]) -> None:
        known = read_json(self.record)
        mlflow = client(known["uri"])
        for path in files:
            if path.is_file():
                folder = path.parent.relative_to(self.root).as_posix()
                mlflow.log_artifact(known["parent"], str(path), None if folder == "." else folder)
        mlflow.set_terminated(known["parent"], "FINISHED")


register_logger("mlflow", MlflowLogger, Options=MlflowOptions, requires={"mlflow": "mlflow"},
                doc="MLflow runs (params, metrics by step) under the study's parent run, with the report as artifacts")
