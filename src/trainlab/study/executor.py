"""Executors: how the trials of a study are run.

inline  one after another in this process (the default with one worker)
pool    a local pool of worker processes (`--workers N`), one trial per worker at a time;
        each worker writes its trial into the study directory as it trains (so the monitor
        sees it live), computes with the study's torch threads, and gets its own GPU
        round-robin when there are several. A trial whose worker dies is
        tried again in a fresh pool, and recorded as failed after 3 deaths.
ray     trials as Ray tasks (`--executor ray [--address HOST:PORT]`), each asking for CPUs
        (and a GPU when its spec trains on cuda). A task trains in a scratch folder on its
        node and returns the trial's files; this process writes them into the study, so the
        cluster needs no shared filesystem. Without --address trainlab starts a Ray instance
        of its own with N workers for the study, whatever RAY_ADDRESS or a leftover
        `ray_current_cluster` file names; `--address auto` joins that cluster, `--address
        HOST:PORT` the one named. The study's plugin modules travel with the Ray
        job it starts (runtime_env py_modules), so the cluster needs none of the user's files
        (with a Ray already initialised by the caller, they must be importable on its nodes).

Every trial is deterministic, so all three give the same numbers, bit for bit: reductions over
a batch (a convolution's weight gradient, BatchNorm's statistics) may differ in the last bit
between torch thread counts, so the count is part of the study. It is chosen once, when the
study is made (`--threads N`, by default DEFAULT_THREADS in every executor, whatever the
number of workers), recorded in study.json, and used by every later command. Every worker fills its
plugin registries as the driver did (built-ins, entry points, the spec's `plugins:`). An
error inside a trial is recorded as that trial's failure in every executor (trial.py).
Hooks given from Python run inside the training process (they are pickled to workers);
sinks get each trial's records in this process (live inline, when the trial ends elsewhere).
"""

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import socket
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
# One torch thread per trial unless the study asks for more: trials are what runs in parallel
# (as torchrun and Ray set OMP_NUM_THREADS=1 for their workers), and the same count everywhere
# makes a study's numbers the same whatever the executor, the worker count or the machine.
DEFAULT_THREADS = 1
RAY_CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class ExecutorOptions:
    kind: str | None = None  # None: pool when workers > 1, else inline
    workers: int = 1
    address: str | None = None  # a Ray cluster; None starts a local instance
    threads: int | None = None  # torch threads per trial; None: the study's (DEFAULT_THREADS for a new one)

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
    threads = options.threads or store.threads or DEFAULT_THREADS
    log.debug("executor %s: %d trial(s), %d worker(s), %d torch thread(s) each", kind, len(plans), options.workers,
              threads)
    if kind == "inline":
        run_inline(store, plans, total, quiet, on_done, extras, threads)
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
        run_on_ray(store, plans, options.workers, options.address, quiet, done, elsewhere, threads)
    else:
        run_in_pool(store, plans, min(options.workers, len(plans)), quiet, done, elsewhere, threads)


def replay_records(store, plan, sinks: list) -> None:
    if not sinks:
        return
    for record in read_jsonl(store.trial_dir(plan.index) / "metrics.jsonl"):
        for sink in sinks:
            sink.log({"trial": plan.index, **record})
    for sink in sinks:
        sink.flush()


def run_inline(store, plans, total: int, quiet: bool, on_done: Callable, extras: Extras, threads: int) -> None:
    with torch_threads(threads):
        for plan in plans:
            run_trial(store, plan, total, quiet, extras)
            on_done(plan)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch computes with `threads` threads inside the block (as it was, for None)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_for(store, asked: int | None) -> int:
    """The torch threads of a command on an existing study: the count its trials ran with, or
    the one asked for, with a warning when that differs (numbers may change in the last bits)."""
    recorded = store.threads
    if asked is None:
        return recorded or DEFAULT_THREADS
    if recorded is not None and asked != recorded:
        log.warning(f"--threads {asked}: the trials of {store.root} ran with {recorded} torch thread(s); "
                    "numbers may differ from theirs in the last bits")
    return asked


def trial_bar(count: int, label: str, quiet: bool):
    return None if quiet else tqdm(total=count, desc=f"trials ({label})", unit="trial", file=sys.stderr)


ATTEMPTS = 3  # a trial whose worker dies this many times is recorded as failed


def run_in_pool(store, plans, workers: int, quiet: bool, on_done: Callable, extras: Extras,
                threads: int = DEFAULT_THREADS) -> None:
    """Trials in a process pool. A worker that dies (killed, out of memory) breaks the pool:
    the trials it was running are tried again in a fresh pool, and a trial that has been in
    flight during ATTEMPTS such deaths is recorded as failed (failure.json) so the rest of
    the study completes; `trainlab resume` tries failed trials again."""
    bar = trial_bar(len(plans), f"{workers} workers", quiet)
    attempts = {plan.index: 0 for plan in plans}
    todo = list(plans)
    try:
        while todo:
            todo = _pool_round(store, todo, workers, on_done, bar, attempts, extras, threads)
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
               threads: int = DEFAULT_THREADS) -> None:
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:  # a Ray job of our own: its runtime environment carries the data paths and plugin modules
        runtime = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("TRAINLAB_")},
                   "py_modules": local_modules(store.spec)}
        connect_ray(ray, address, workers, {k: v for k, v in runtime.items() if v} or None)
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


def connect_ray(ray, address: str | None, workers: int, runtime_env: dict | None) -> None:
    """Start a Ray instance of our own (no --address), or join the cluster the user named.
    Ray's own default would join whatever RAY_ADDRESS or the last `ray start` left in its temp
    folder names, even a cluster long gone; and it waits minutes on an address nobody answers,
    so a named cluster is reached first (a few seconds at most)."""
    options = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", runtime_env=runtime_env)
    if address is None:
        with without_env("RAY_ADDRESS"):
            try:
                ray.init(address="local", num_cpus=workers, **options)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UserError(f"--executor ray: cannot start a local Ray instance: {one_line(exc)}") from None
        return
    target = cluster_address(address)
    check_reachable(address, target)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UserError(f"--address {address}: cannot connect to the Ray cluster at {target}: {one_line(exc)}; see "
                        "docs/spec.md (Ray clusters) for how to start one, token included") from None


def cluster_address(address: str) -> str:
    """HOST:PORT of the cluster `address` names ("auto": RAY_ADDRESS, else the last `ray start`)."""
    if address != "auto":
        return address.split("://", 1)[-1]
    found = os.environ.get("RAY_ADDRESS")
    if not found:
        try:
            from ray._private.utils import read_ray_address  # the file `ray start` leaves
            found = read_ray_address()
        except (ImportError, AttributeError, OSError):
            found = None
    if not found:
        raise UserError("--address auto: no Ray cluster to join (RAY_ADDRESS is unset and no `ray start` left an "
                        "address); start one with `ray start --head`, or leave out --address for a local instance")
    return found.split("://", 1)[-1]


def check_reachable(address: str, target: str) -> None:
    """One line, at once, when nothing answers at HOST:PORT (Ray itself would retry for minutes)."""
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--address {address}: {target!r} is not HOST:PORT (e.g. 10.0.0.5:6379), 'auto' or "
                        "ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except socket.gaierror as exc:
        raise UserError(f"--address {address}: unknown host {host!r} ({exc.strerror})") from None
    except TimeoutError:
        raise UserError(f"--address {address}: no answer from {target} within {RAY_CONNECT_TIMEOUT_S} s; is the "
                        "cluster up and the port open?") from None
    except OSError as exc:
        raise UserError(f"--address {address}: cannot reach {target} ({exc.strerror or exc}); is `ray start --head` "
                        "running there?") from None


@contextlib.contextmanager
def without_env(name: str):
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400]


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
