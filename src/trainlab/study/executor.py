"""Executors: how the trials of a study are run.

inline  one after another in this process (default)
pool    a local pool of worker processes (`--workers N`), one trial per worker at a time;
        each worker writes its trial into the study directory as it trains (so the monitor
        sees it live), gets its share of the CPU threads ($TRAINLAB_WORKER_THREADS overrides
        it), and its own GPU round-robin when
        there are several. Results are the same as inline: every trial is deterministic.
"""

import multiprocessing as mp
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from tqdm.auto import tqdm

from ..errors import UserError


def run_inline(store, plans, total: int, quiet: bool, on_done: Callable) -> None:
    from .runner import run_trial

    for plan in plans:
        run_trial(store, plan, total, quiet)
        on_done(plan)


def run_in_pool(store, plans, workers: int, quiet: bool, on_done: Callable) -> None:
    context = mp.get_context("spawn")  # a clean interpreter per worker: no inherited torch threads or locks
    slots = context.Value("i", 0)
    threads = int(os.environ.get("TRAINLAB_WORKER_THREADS") or max(1, (os.cpu_count() or 1) // workers))
    bar = None if quiet else tqdm(total=len(plans), desc=f"trials ({workers} workers)", unit="trial", file=sys.stderr)
    pending = {}
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(slots, threads)) as pool:
        for plan in plans:
            pending[pool.submit(_run_one, str(store.root), plan)] = plan
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    plan = pending.pop(future)
                    future.result()
                    on_done(plan)
                    if bar is not None:
                        bar.update(1)
        except BrokenProcessPool:
            raise UserError(f"a worker process died while running trials of {store.root}; "
                            f"`trainlab resume {store.root}` runs the unfinished ones again") from None
        finally:
            if bar is not None:
                bar.close()


def _start_worker(slots, threads: int) -> None:
    import torch

    with slots.get_lock():
        slot = slots.value
        slots.value += 1
    torch.set_num_threads(threads)
    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(slot % torch.cuda.device_count())  # "cuda" in a spec means this worker's GPU


def _run_one(root: str, plan) -> None:
    from .runner import run_trial
    from .store import StudyStore

    run_trial(StudyStore.open(root), plan, 0, quiet=True)
