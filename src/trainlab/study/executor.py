"""Executors: how the trials of a study are run.

inline  one after another in this process (the default with one worker)
pool    a local pool of worker processes (`--workers N`), one trial per worker at a time;
        each worker writes its trial into the study directory as it trains (so the monitor
        sees it live), gets its share of the CPU threads (--threads overrides it), and its own GPU round-robin when there are several. A trial whose worker dies is
        tried again in a fresh pool, and recorded as failed after 3 deaths.
ray     trials as Ray tasks (`--executor ray [--address HOST:PORT]`), each asking for CPUs
        (and a GPU when its spec trains on cuda). A task trains in a scratch folder on its
        node and returns the trial's files; this process writes them into the study, so the
        cluster needs no shared filesystem. Without --address a local Ray instance with
        N workers is started for the study. The study's plugin modules travel with the Ray
        job it starts (runtime_env py_modules), so the cluster needs none of the user's files
        (with a Ray already initialised by the caller, they must be importable on its nodes).

Every trial is deterministic, so all three give the same numbers: bit for bit when each
trial has the same number of torch threads (`--threads N`; by default the machine's cores
are divided among the workers, and reductions over a batch, as in a convolution's weight
gradient or BatchNorm's statistics, may differ in the last bit between thread counts). Every worker fills its
plugin registries as the driver did (built-ins, entry points, the spec's `plugins:`). An
error inside a trial is recorded as that trial's failure in every executor (trial.py).
Hooks given from Python run inside the training process (they are pickled to workers);
sinks get each trial's records in this process (live inline, when the trial ends elsewhere).
"""

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..io import read_jsonl
from . import loggers
from .store import StudyStore
from .trial import Extras, run_trial

log = logging.getLogger(__name__)

KINDS = ("inline", "pool", "ray")


@dataclass(frozen=True)
class ExecutorOptions:
    kind: str | None = None  # None: pool when workers > 1, else inline
    workers: int = 1
    address: str | None = None  # a Ray cluster; None starts a local instance
    threads: int | None = None  # torch threads per trial; None: the cores divided among the workers

    def __post_init__(self):
        if self.kind is not None and self.kind not in KINDS:
            raise UserError(f"--executor: must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not 1 <= self.workers <= 256:
            raise UserError(f"--workers: must be between 1 and 256, got {self.workers}")
        if self.address is not None and self.kind != "ray":
            raise UserError("--address: only with --executor ray")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise UserError(f"--threads: must be between 1 and 1024, got {self.threads}")

    def resolved_kind(self, trials: int) -> str:
        if self.kind is not None:
            return self.kind
        return "pool" if self.workers > 1 and trials > 1 else "inline"


def run_trials(store, plans, options: ExecutorOptions, quiet: bool, on_done: Callable, total: int,
               extras: Extras | None = None) -> None:
    kind = options.resolved_kind(len(plans))
    extras = extras or Extras()
    if not plans:
        return
    log.debug("executor %s: %d trial(s), %d worker(s), %s torch thread(s) each", kind, len(plans), options.workers,
              options.threads or ("all" if kind == "inline" else worker_threads(options.workers)))
    if kind == "inline":
        run_inline(store, plans, total, quiet, on_done, extras, options.threads)
        return
    # sinks stay here: they get each trial's records when it ends; loggers log in pool workers
    # as they train, and here for Ray trials, whose files arrive when they end
    elsewhere = Extras(hooks=extras.hooks, log=kind != "ray")
    study_loggers = loggers.loggers_of(store) if kind == "ray" and extras.log else []

    def done(plan) -> None:
        replay_records(store, plan, extras.sinks)
        if study_loggers:
            loggers.replay(study_loggers, store, plan)
        on_done(plan)

    if kind == "ray":
        run_on_ray(store, plans, options.workers, options.address, quiet, done, elsewhere, options.threads)
    else:
        run_in_pool(store, plans, min(options.workers, len(plans)), quiet, done, elsewhere, options.threads)


def replay_records(store, plan, sinks: list) -> None:
    if not sinks:
        return
    for record in read_jsonl(store.trial_dir(plan.index) / "metrics.jsonl"):
        for sink in sinks:
            sink.log({"trial": plan.index, **record})
    for sink in sinks:
        sink.flush()


def run_inline(store, plans, total: int, quiet: bool, on_done: Callable, extras: Extras, threads: int | None) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        for plan in plans:
            run_trial(store, plan, total, quiet, extras)
            on_done(plan)
    finally:
        torch.set_num_threads(before)


def worker_threads(workers: int, threads: int | None = None) -> int:
    """Torch threads of each worker: as asked, else the machine's cores divided among the workers."""
    return threads or max(1, (os.cpu_count() or 1) // workers)


def trial_bar(count: int, label: str, quiet: bool):
    return None if quiet else tqdm(total=count, desc=f"trials ({label})", unit="trial", file=sys.stderr)


ATTEMPTS = 3  # a trial whose worker dies this many times is recorded as failed


def run_in_pool(store, plans, workers: int, quiet: bool, on_done: Callable, extras: Extras,
                threads: int | None = None) -> None:
    """Trials in a process pool. A worker that dies (killed, out of memory) breaks the pool:
    the trials it was running are tried again in a fresh pool, and a trial that has been in
    flight during ATTEMPTS such deaths is recorded as failed (failure.json) so the rest of
    the study completes; `trainlab resume` tries failed trials again."""
    bar = trial_bar(len(plans), f"{workers} workers", quiet)
    attempts = {plan.index: 0 for plan in plans}
    todo = list(plans)
    try:
        while todo:
            todo = _pool_round(store, todo, workers, on_done, bar, attempts, extras, worker_threads(workers, threads))
    finally:
        if bar is not None:
            bar.close()


def _pool_round(store, plans, workers: int, on_done: Callable, bar, attempts: dict, extras: Extras, threads: int) -> list:
    """Run `plans` until done or until the pool breaks; return the ones to try again."""
    context = mp.get_context("spawn")  # a clean interpreter per worker: no inherited torch threads or locks
    slots = context.Value("i", 0)
    pending = {}
    with ProcessPoolExecutor(min(workers, len(plans)), mp_context=context, initializer=_start_worker,
                             initargs=(slots, threads, os.getpid())) as pool:
        for plan in plans:
            pending[pool.submit(_run_one, str(store.root), plan, extras)] = plan
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # a broken pool raises here, and the trial stays pending
                    plan = pending.pop(future)
                    on_done(plan)
                    if bar is not None:
                        bar.update(1)
        except BrokenProcessPool:
            pass
        except BaseException:  # Ctrl-C, SIGTERM, an error here: no queued trial starts, no worker outlives us
            stop_pool(pool)
            raise
    retry = []
    for plan in pending.values():
        if store.finished(plan):  # it finished before the pool noticed the death
            on_done(plan)
            if bar is not None:
                bar.update(1)
            continue
        attempts[plan.index] += 1
        if attempts[plan.index] >= ATTEMPTS:
            fail(store, plan, f"its worker process died {attempts[plan.index]} times (killed, or out of memory?)",
                 attempts[plan.index])
        else:
            retry.append(plan)
    return retry


def fail(store, plan, reason: str, attempts: int) -> None:
    """Record a trial as failed (failure.json, listed in the report) and say so."""
    store.fail_trial(plan, reason, attempts)
    log.warning(f"trial {plan.index} failed: {reason}")


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel every queued trial and end the workers now (their trials are unfinished: a resume
    runs them again)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # the executor keeps no public handle
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=5)


def die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when the process that started it dies, by any signal
    (and if it died while this worker was still starting, the worker ends now)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent:
        os._exit(1)


def _start_worker(slots, threads: int, parent: int) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    with slots.get_lock():
        slot = slots.value
        slots.value += 1
    torch.set_num_threads(threads)
    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(slot % torch.cuda.device_count())  # "cuda" in a spec means this worker's GPU


def _run_one(root: str, plan, extras: Extras) -> None:
    run_trial(StudyStore.open(root), plan, 0, quiet=True, extras=extras)


RAY_RETRIES = ATTEMPTS - 1  # Ray re-runs a task whose worker died this many times


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'trainlab[ray]'") from None
    return ray


def run_on_ray(store, plans, workers: int, address: str | None, quiet: bool, on_done: Callable, extras: Extras,
               threads: int | None = None) -> None:
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:  # a Ray job of our own: its runtime environment carries the data paths and plugin modules
        runtime = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("TRAINLAB_")},
                   "py_modules": local_modules(store.spec)}
        try:
            ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR", runtime_env={k: v for k, v in runtime.items() if v} or None)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"--address {address!r}: cannot connect to a Ray cluster: {exc}") from None
    # locally Ray counts one CPU per worker while torch gets the worker's share of the cores
    threads = worker_threads(workers, threads) if address is None else (threads or 1)
    task = ray.remote(run_detached)
    bar = trial_bar(len(plans), f"ray, {workers} workers" if address is None else f"ray at {address}", quiet)
    try:
        pending = {}
        for plan in plans:
            gpus = 1 if plan.spec["plan"]["device"].startswith("cuda") else 0
            options = task.options(num_cpus=1 if address is None else threads, num_gpus=gpus, max_retries=RAY_RETRIES)
            pending[options.remote(plan, threads, extras, str(store.root))] = plan
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            plan = pending.pop(done[0])
            result = _ray_result(ray, done[0], plan)
            if "died" in result:
                fail(store, plan, result["died"], RAY_RETRIES + 1)
            elif result["summary"] is None:  # the trial raised: its failure.json came back with its files
                store.adopt_trial(plan, result["files"], None)
                on_done(plan)
            else:
                store.adopt_trial(plan, result["files"], result["summary"])
                on_done(plan)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if started_here:
            ray.shutdown()


def _ray_result(ray, ref, plan) -> dict:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # outside the trial itself (a trial's own errors come back as files)
        cause = err.cause if isinstance(err.cause, BaseException) else err
        raise UserError(f"trial {plan.index} on Ray: {' '.join(str(cause).split())[:600]}") from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as err:
        return {"died": f"its Ray worker died after {RAY_RETRIES} retries ({type(err).__name__})"}


def local_modules(spec: dict) -> list[str]:
    """Files or package folders of the spec's plugin modules that are not installed packages:
    Ray ships them to every worker (runtime_env py_modules)."""
    paths = []
    for root in spec.get("plugin_path") or []:
        for name in spec.get("plugins", []):
            top = name.split(".")[0]
            for candidate in (Path(root) / top, Path(root) / f"{top}.py"):
                if candidate.exists() and str(candidate) not in paths:
                    paths.append(str(candidate))
    return paths


def run_detached(plan, threads: int, extras: Extras, study_root: str) -> dict:
    """Run one trial in a scratch folder and return its files and summary, None when it failed
    (its failure.json is among the files). Runs on a Ray worker."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="trainlab-trial-") as scratch:
        store = StudyStore(Path(scratch), {"spec": plan.spec, "trials": [plan.describe()]}, inputs_root=Path(study_root))
        summary = run_trial(store, plan, 0, quiet=True, extras=extras)
        folder = store.trial_dir(plan.index)
        files = {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
                 if path.is_file() and path.name != "summary.json"}
    return {"files": files, "summary": summary}
