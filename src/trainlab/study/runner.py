"""run_study / resume_study: spec -> trials -> executor -> store -> report."""

import contextlib
import dataclasses
import errno
import logging
import math
import signal
import sys
import threading
from pathlib import Path

from ..engine import Trial
from ..engine.trainer import planned_steps
from ..errors import Interrupted, SpecError, TrialsFailed, UserError
from ..plugin import origin, registries as process_registries
from ..spec import check_step_bounds, load_spec
from . import loggers
from .executor import DEFAULT_THREADS, ExecutorOptions, run_trials, threads_for, torch_threads
from .optuna_search import check_storage, search
from .store import StudyStore
from .sweep import TrialPlan, expand, plans_for
from .trial import Extras, job_of

log = logging.getLogger(__name__)


def preflight(plans: list[TrialPlan]) -> None:
    """Build (not train) one trial per distinct task/plan/arms so data, device, batch size
    and checkpoints are checked before anything is written; a plan in epochs has its event
    steps checked here, where its length is known."""
    per_epoch = {}  # signature -> steps per epoch
    for plan in plans:
        # the length of training changes none of these checks: trials differing only in it share one
        setup = {k: v for k, v in plan.spec["plan"].items() if k not in ("steps", "epochs")}
        signature = repr((plan.spec["task"], setup, plan.spec["arms"], plan.spec.get("job")))
        if signature not in per_epoch:
            if plan.spec.get("job"):
                job_of(plan.spec).check(plan.spec)
                per_epoch[signature] = None
            else:
                per_epoch[signature] = Trial(plan.spec).stream.steps_per_epoch
        if per_epoch[signature] is not None and plan.spec["plan"]["steps"] is None:
            registries = process_registries(plan.spec.get("plugins", []), plan.spec.get("plugin_path"))
            check_step_bounds(plan.spec, planned_steps(plan.spec["plan"], per_epoch[signature]), registries)


def execute(store: StudyStore, plans: list[TrialPlan], quiet: bool = False,
            executor: ExecutorOptions = ExecutorOptions(), extras: Extras | None = None) -> None:
    prepare = report_of(store).trait("prepare")
    if prepare is not None:  # study-level inputs a recipe makes before its trials (again after a kill)
        prepare(store, quiet)
    loggers.prepare(loggers.loggers_of(store))
    if store.spec["sweep"].get("optuna"):
        search(store, executor, quiet, lambda todo: run_plans(store, todo, len(todo), quiet, executor, extras))
        return
    todo = [plan for plan in plans if not store.finished(plan)]
    if not quiet:
        log.info(f"study {store.root}: {len(plans)} trial(s), {len(plans) - len(todo)} already finished")
    run_plans(store, todo, len(plans), quiet, executor, extras)


def run_plans(store: StudyStore, todo: list[TrialPlan], total: int, quiet: bool, executor: ExecutorOptions,
              extras: Extras | None = None) -> None:
    """Run `todo` in waves: a trial whose job runs after other trials waits for them; one whose
    inputs failed is recorded as failed too."""
    on_trial_end = report_of(store).trait("on_trial_end")

    def finished(plan: TrialPlan) -> None:  # recipe outputs are written by this process, in any executor
        if on_trial_end is not None and store.finished(plan):
            on_trial_end(store, plan)
        failure = None if store.finished(plan) else store.failure(plan)
        if failure and not quiet:
            log.warning(f"trial {plan.index} failed: {failure['reason']}")

    waiting = list(todo)
    while waiting:
        ready = [plan for plan in waiting if all(store.finished_index(i) for i in after(plan))]
        pending = {plan.index for plan in waiting}
        blocked = [plan for plan in waiting if plan not in ready  # an input that will not run now and is not done
                   and any(i not in pending and not store.finished_index(i) for i in after(plan))]
        for plan in blocked:
            store.fail_trial(plan, f"it runs after trial(s) {after(plan)}, and one of them failed")
            finished(plan)
        if not ready:
            break
        run_trials(store, ready, executor, quiet, finished, total, extras)
        waiting = [plan for plan in waiting if plan not in ready and plan not in blocked]


def after(plan: TrialPlan) -> list[int]:
    return list((plan.spec.get("job") or {}).get("after", []))


def run_study(spec: str | Path | dict, overrides: list[str] | dict | None = None, quiet: bool = False,
              on_create=None, workers: int = 1, executor: ExecutorOptions | None = None, plugins: list[str] = (),
              hooks: list = (), sinks: list = (), loggers: list[str] = ()) -> Path:
    """Run a spec (a file, a dict, or an already resolved spec) as a new study; returns its directory.

    `plugins` are modules added to the spec's own `plugins:`; `hooks` (trainlab.Hook objects)
    join every trial; `sinks` (anything with log(record) and flush()) get every record with
    its trial index. `on_create(store, plans)` may add files to the new study directory before
    any trial runs. `executor` picks inline / pool / ray; `workers` alone means a pool of that
    many processes. Raises TrialsFailed (a UserError) when a trial failed: the other trials
    ran, and `resume_study` runs the failed ones again. `loggers` adds trackers by name to the
    spec's output.loggers (tensorboard, mlflow, wandb)."""
    spec = load_spec(spec, overrides, plugins=list(plugins))
    if loggers:
        known = [item["kind"] for item in spec["output"]["loggers"]]
        spec["output"]["loggers"] += [{"kind": name} for name in dict.fromkeys(loggers) if name not in known]
        spec = load_spec(spec)
    executor = executor or ExecutorOptions(workers=workers)
    executor = dataclasses.replace(executor, threads=executor.threads or DEFAULT_THREADS)  # the study's from now on
    plans = expand(spec)
    preflight(plans or first_proposal(spec))
    check_workers_can_import(spec, executor, max(len(plans), 2))
    check_storage(spec)
    store = StudyStore.create(spec, plans, threads=executor.threads)
    # the driver's own work (a recipe's pretraining, the report) computes as the trials do
    with interruptions(store), space_errors(store), store.lock(), torch_threads(executor.threads):
        if on_create is not None:
            on_create(store, plans)
        execute(store, plans, quiet, executor, Extras(list(hooks), list(sinks)))
        finish(store, quiet)
    return store.root


def check_workers_can_import(spec: dict, executor: ExecutorOptions, trials: int) -> None:
    """A plugin defined in __main__ exists only in this process. Pool workers re-run a main
    script (so a script's registrations reach them), but not a notebook or `python -c`, and Ray
    workers never do: say so before anything runs."""
    kind = executor.resolved_kind(trials)
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if kind == "inline" or (kind == "pool" and script and Path(script).suffix == ".py"):
        return
    registries = process_registries(spec.get("plugins", []), spec.get("plugin_path"))
    used = [(registries.tasks, spec["task"]["name"], "task.name")]
    used += [(registries.optimizers, arm["optimizer"], f"arms.{i}.optimizer") for i, arm in enumerate(spec["arms"])]
    used += [(registries.events, e["kind"], f"events.{i}.kind") for i, e in enumerate(spec["events"])]
    used += [(registries.probes, p["kind"], f"probes.{i}.kind") for i, p in enumerate(spec["probes"])]
    for registry, name, path in used:
        if origin(registry.get(name, path).target).startswith("__main__."):
            raise SpecError(path, f"{registry.kind} {name!r} is defined in __main__, which worker processes cannot "
                                  "import: put it in a module and name that module in the spec's plugins: (or run "
                                  "with one worker)")


def first_proposal(spec: dict) -> list[TrialPlan]:
    """An adaptive search has no trials yet: check the spec with the low end of its search space."""
    params = spec["sweep"]["optuna"]["params"] if spec["sweep"].get("optuna") else {}
    def low_end(p: dict):
        if p["values"]:
            return p["values"][0]
        return math.ceil(p["low"]) if p["integer"] else p["low"]  # as Optuna's IntDistribution starts

    return plans_for(spec, [{path: low_end(p) for path, p in params.items()}])[:1]


def resume_study(path: str | Path, quiet: bool = False, workers: int = 1, executor: ExecutorOptions | None = None,
                 hooks: list = (), sinks: list = ()) -> Path:
    """Run only the unfinished (or failed) trials of an existing study; as run_study."""
    store = StudyStore.open(path)
    store.require_trust("resume")
    plans = expand(store.spec)
    stored = [t["key"] for t in store.meta.get("trials", [])]
    if not store.spec["sweep"].get("optuna") and stored != [plan.key for plan in plans]:
        raise UserError(f"{str(path)!r}: its trials do not match its spec (was study.json edited, or made by "
                        "another trainlab version?); start a new study instead")
    executor = executor or ExecutorOptions(workers=workers)
    executor = dataclasses.replace(executor, threads=threads_for(store, executor.threads))
    with interruptions(store), space_errors(store), store.lock(), torch_threads(executor.threads):
        execute(store, plans, quiet, executor, Extras(list(hooks), list(sinks)))
        finish(store, quiet)
    return store.root


@contextlib.contextmanager
def interruptions(store: StudyStore):
    """Ctrl-C or SIGTERM ends the study where it stands (the pool's workers with it): re-raised
    as Interrupted, naming the study to resume."""
    previous = signal.getsignal(signal.SIGTERM)
    is_main = threading.current_thread() is threading.main_thread()

    def terminate(signum, frame):
        raise Interrupted(store.root, "SIGTERM")

    if is_main:
        signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except Interrupted as stop:
        stop.study_dir = store.root
        raise
    except KeyboardInterrupt:
        raise Interrupted(store.root) from None
    finally:
        if is_main:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def space_errors(store: StudyStore):
    """A full disk (or quota) ends the study with one clear line; everything written so far is
    complete files (atomic writes, whole metrics lines), so `resume` picks up once space is back."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        raise UserError(f"no space left on the device of {store.root}{where}; free some space, then "
                        f"`trainlab resume {store.root}` runs the unfinished trials") from None


def report_of(store: StudyStore):
    return store.registries().reports.get(store.spec["output"]["report"])


def finish(store: StudyStore, quiet: bool) -> None:
    """The report (it lists failed trials), then the failures, if any, as an error."""
    report = report_of(store).target(store.root)
    if report is not None and not quiet:
        log.info(f"report: {report}")
    loggers.finish(loggers.loggers_of(store), store, report)
    failures = store.failures()
    if failures:
        raise TrialsFailed(store.root, failures)
