"""What every logger shares: a study's records turned into named scalars, and each run's
hyperparameters.

A logger plugin (`register_logger`) is a class built as `Logger(study_root, spec, options)`:

    prepare()                       in the driver, before any trial (create the experiment)
    open_trial(index, folder, arms) -> TrialLog: one run per arm of that trial; `arms` maps
                                    each arm to its hyperparameters (flat name -> value)
    finish(files)                   in the driver, after the report: its figures and report.md

and a TrialLog takes the trial's records (`log(record)`, `flush()`) and ends with
`close(summary)` (None when the trial failed). A logger runs where the trial runs (the
driver inline, each pool worker), so it is live; with Ray, the driver replays each trial's
records into it when the trial's files come back. Logging the same records again (`trainlab
export`, or a trial that reruns after a kill) replaces that trial's runs.
"""

import math
from pathlib import Path

from ..io import Anchor

SKIP = {"kind", "arm", "step", "trial", "probe", "event", "reason", "time"}


def scalars(record: dict) -> dict[str, float]:
    """One record's numbers under the names every logger uses: train/loss, eval/accuracy,
    probe/<name>, event/diverged. Non-numbers (and non-finite numbers) are left out."""
    kind = record.get("kind", "train")
    if kind == "event":
        return {f"event/{record.get('event', 'event')}": 1.0}
    prefix = "probe" if kind == "probe" else kind
    out = {}
    for key, value in record.items():
        if key in SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{prefix}/{key}"] = float(value)
    return out


def flatten(data, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their text (loggers take scalars and strings)."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def arm_hyperparameters(spec: dict, describe: dict) -> dict[str, dict]:
    """Each arm's run parameters: the arm's resolved settings (optimizer, lr, its options), the
    task, the trial's seed and index, and every swept field with the value this trial used."""
    common = {"trial": describe["index"], "seed": describe["seed"], "task": spec["task"].get("name"),
              **{f"task.{k}": v for k, v in flatten(spec["task"]).items() if k != "name"},
              **{f"plan.{k}": v for k, v in flatten(spec.get("plan", {})).items()},
              **{f"swept.{k}": v for k, v in flatten(describe.get("overrides") or {}).items()}}
    arms = {arm["name"]: {**common, **{f"arm.{k}": v for k, v in flatten(arm).items()}} for arm in spec.get("arms", [])}
    return arms or {"job": common}


def final_numbers(summary: dict | None, arm: str) -> dict[str, float]:
    """The numbers a trial's summary gives an arm (final loss, accuracy, ...), for the run's end."""
    numbers = ((summary or {}).get("arms") or {}).get(arm) or {}
    return {f"final/{k.removeprefix('final_')}": float(v) for k, v in numbers.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def run_name(index: int, arm: str) -> str:
    return f"trial_{index:04d}/{arm}"


def figures_of(files: list[Path]) -> list[Path]:
    return [f for f in files if f.suffix.lower() == ".png" and f.is_file()]


class Logger:
    """Base class: a logger that needs no preparation and logs no study files."""

    def __init__(self, study_root: Path, spec: dict, options: dict):
        self.root, self.spec, self.options = Path(study_root), spec, options

    def place(self, folder: Path | str = "") -> Anchor:
        """`folder` (relative to the study, or one of its paths) as a place to write in, checked
        from the study root: the tracker's folders are made through no link before its library
        writes into them, and removed without following any."""
        folder = Path(folder)  # a folder outside the study is refused (io.UnsafePath), never written
        return Anchor(self.root) / (folder.relative_to(self.root) if folder.is_relative_to(self.root) else folder)

    def prepare(self) -> None:
        pass

    def open_trial(self, index: int, folder: Path, arms: dict[str, dict]):
        raise NotImplementedError

    def finish(self, files: list[Path]) -> None:
        pass


class PerArm:
    """A TrialLog that routes each record to the run of its arm. The spec's arms get their runs
    when the trial starts; any other arm a record names (a job's modes) gets one when it first
    appears, with the trial's common parameters."""

    def __init__(self, open_run, arms: dict[str, dict]):
        self.open_run = open_run  # (arm, params) -> a run with scalars(numbers, step), flush(), close(final, failed)
        self.common = next(iter(arms.values())) if arms else {}
        self.common = {k: v for k, v in self.common.items() if not k.startswith("arm.")}
        self.runs = {arm: open_run(arm, params) for arm, params in arms.items() if arm != "job"}

    def run_of(self, record: dict):
        arm = str(record.get("arm") or "job")
        if arm not in self.runs:
            self.runs[arm] = self.open_run(arm, {**self.common, "arm.name": arm})
        return self.runs[arm]

    def log(self, record: dict) -> None:
        numbers = scalars(record)
        if numbers:
            self.run_of(record).scalars(numbers, int(record.get("step", 0)))

    def flush(self) -> None:
        for run in self.runs.values():
            run.flush()

    def close(self, summary: dict | None) -> None:
        for arm, run in self.runs.items():
            run.close(final_numbers(summary, arm), failed=summary is None)
