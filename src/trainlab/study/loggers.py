"""A study's experiment trackers (output.loggers): made ready before the trials, given each
trial's records where the trial runs, handed the report at the end, and replayed from the
store for `trainlab export` (or for Ray trials, when their files come back)."""

import logging
from pathlib import Path

from ..errors import UserError, one_line
from ..io import read_json, read_jsonl
from ..loggers import arm_hyperparameters
from ..options import validate_options
from ..spec import check_installed
from .store import StudyStore
from .sweep import TrialPlan

log = logging.getLogger(__name__)

TRACKER_FOLDERS = {"tensorboard", "wandb", "mlartifacts", "loggers"}  # what loggers write, never logged back


def loggers_of(store: StudyStore, items: list[dict] | None = None) -> list:
    """The study's loggers (or `items`, [{kind, options}], for an export)."""
    registries = store.registries()
    items = store.spec["output"].get("loggers", []) if items is None else items
    return [registries.loggers.get(item["kind"]).target(store.root, store.spec,
                                                        {k: v for k, v in item.items() if k != "kind"})
            for item in items]


def prepare(loggers: list) -> None:
    """Before any trial: a tracker that cannot be reached stops the study here, in one line."""
    for logger in loggers:
        try:
            logger.prepare()
        except Exception as exc:
            raise UserError(f"output.loggers: {type(logger).__name__} could not start: {one_line(exc)}") from None


def open_trial(loggers: list, store: StudyStore, plan: TrialPlan) -> list:
    """Each logger's TrialLog for this trial (its runs replace any earlier ones of the trial)."""
    arms = arm_hyperparameters(plan.spec, plan.describe())
    return [logger.open_trial(plan.index, store.trial_dir(plan.index), arms) for logger in loggers]


def replay(loggers: list, store: StudyStore, plan: TrialPlan) -> None:
    """Log a trial that ran elsewhere (or before) from its stored records and summary."""
    logs = open_trial(loggers, store, plan)
    for record in read_jsonl(store.trial_dir(plan.index) / "metrics.jsonl"):
        for trial_log in logs:
            trial_log.log(record)
    summary = store.summary_of(plan.index) if store.finished(plan) else None
    for trial_log in logs:
        trial_log.flush()
        trial_log.close(summary)


def study_files(store: StudyStore, report: Path | None) -> list[Path]:
    """The report and the figures the study made (not the trials' own files)."""
    trials = {folder.resolve() for _, folder in store.trial_dirs()}
    figures = [path for path in sorted(store.root.rglob("*.png"))
               if not TRACKER_FOLDERS.intersection(path.relative_to(store.root).parts)
               and not any(parent.resolve() in trials for parent in path.parents)]
    return ([Path(report)] if report is not None and Path(report).is_file() else []) + figures


def finish(loggers: list, store: StudyStore, report: Path | None) -> None:
    files = study_files(store, report)
    for logger in loggers:
        logger.finish(files)


def stored_plans(store: StudyStore) -> list[TrialPlan]:
    """Every trial of the study that has started, as it was run (its config.json)."""
    plans = []
    for index, folder in store.trial_dirs():
        config = folder / "config.json"
        if config.is_file():
            c = read_json(config)
            plans.append(TrialPlan(c["index"], c["key"], c["seed"], c.get("overrides") or {}, c["spec"]))
    return plans


def export(study_dir: str | Path, items: list[dict], quiet: bool = True) -> list[int]:
    """Log an existing study to the trackers `items` ([{kind, options}]) as if it had run with
    them: the same runs, from its stored records and summaries. Returns the trials logged."""
    store = StudyStore.open(study_dir)
    registries = store.registries()
    for item in items:
        plugin = registries.loggers.get(item["kind"], "--to")
        check_installed(plugin, "--to")
        item.update(validate_options(plugin.Options, {k: v for k, v in item.items() if k != "kind"}, "--to"))
    with store.lock():
        study_loggers = loggers_of(store, items)
        prepare(study_loggers)
        plans = stored_plans(store)
        for n, plan in enumerate(plans):
            if not quiet:
                log.info(f"export: trial {n + 1}/{len(plans)}")
            replay(study_loggers, store, plan)
        report = store.root / "report.md"
        finish(study_loggers, store, report if report.is_file() else None)
    return [plan.index for plan in plans]
