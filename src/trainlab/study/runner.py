"""run_study / resume_study: spec -> trials -> executor -> store -> report."""

import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..engine import Trial
from ..errors import UserError
from ..spec import load_spec
from .executor import run_in_pool, run_inline
from .store import StudyStore
from .sweep import TrialPlan, expand


def preflight(plans: list[TrialPlan]) -> None:
    """Build (not train) one trial per distinct task/plan/arms so data, device, batch size
    and checkpoints are checked before anything is written."""
    seen = set()
    for plan in plans:
        # the length of training changes none of these checks: trials differing only in it share one
        setup = {k: v for k, v in plan.spec["plan"].items() if k not in ("steps", "epochs")}
        signature = repr((plan.spec["task"], setup, plan.spec["arms"]))
        if signature not in seen:
            seen.add(signature)
            Trial(plan.spec)


def run_trial(store: StudyStore, plan: TrialPlan, total: int, quiet: bool) -> dict:
    writer = store.start_trial(plan)
    bar = None if quiet else tqdm(desc=f"trial {plan.index + 1}/{total}", unit="step", leave=False,
                                  file=sys.stderr, dynamic_ncols=True)
    try:
        trial = Trial(plan.spec, sink=writer, artifact_dir=store.trial_dir(plan.index), progress=bar)
        if bar is not None:
            bar.total = trial.total_steps
        summary = trial.run()
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    store.finish_trial(plan, summary)
    return summary


def execute(store: StudyStore, plans: list[TrialPlan], quiet: bool = False, workers: int = 1) -> None:
    todo = [plan for plan in plans if not store.finished(plan)]
    if not quiet:
        done = len(plans) - len(todo)
        print(f"study {store.root}: {len(plans)} trial(s), {done} already finished", file=sys.stderr)
    report = report_of(store)

    def finished(plan: TrialPlan) -> None:  # recipe outputs are written by this process, in any executor
        if report.on_trial_end is not None:
            report.on_trial_end(store, plan)

    if workers > 1 and len(todo) > 1:
        run_in_pool(store, todo, min(workers, len(todo)), quiet, finished)
    else:
        run_inline(store, todo, len(plans), quiet, finished)


def run_study(spec: str | Path | dict, overrides: list[str] | dict | None = None, quiet: bool = False,
              on_create=None, workers: int = 1) -> Path:
    """Run a spec (a file, a dict, or an already resolved spec) as a new study; returns its directory.
    `on_create(store, plans)` may add files to the new study directory before any trial runs."""
    spec = load_spec(spec, overrides)
    plans = expand(spec)
    preflight(plans)
    store = StudyStore.create(spec, plans)
    if on_create is not None:
        on_create(store, plans)
    execute(store, plans, quiet, workers)
    finish(store, quiet)
    return store.root


def resume_study(path: str | Path, quiet: bool = False, workers: int = 1) -> Path:
    """Run only the unfinished trials of an existing study."""
    store = StudyStore.open(path)
    plans = expand(store.spec)
    stored = [t["key"] for t in store.meta.get("trials", [])]
    if stored != [plan.key for plan in plans]:
        raise UserError(f"{str(path)!r}: its trials do not match its spec (was study.json edited, or made by "
                        "another trainlab version?); start a new study instead")
    execute(store, plans, quiet, workers)
    finish(store, quiet)
    return store.root


def report_of(store: StudyStore):
    from .. import plugins  # reports import the study layer: look them up at run time

    return plugins.reports.get(store.spec["output"]["report"])


def finish(store: StudyStore, quiet: bool) -> None:
    report = report_of(store).build(store.root)
    if report is not None and not quiet:
        print(f"report: {report}", file=sys.stderr)
