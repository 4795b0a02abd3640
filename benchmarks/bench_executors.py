"""Executors: orchestration overhead per trial, and the throughput of 1 vs 2 workers (pool, Ray).

    .venv/bin/python benchmarks/bench_executors.py [--trials 20] [--smoke]

Overhead: a study of trials that do almost nothing (one step of a tiny model) against the
same trials run directly with Trial(...).run(), per trial. Throughput: CPU-bound trials (the
CNN) through a pool of 1 worker, a pool of 2 workers and a local Ray instance with 2 workers
(when Ray is installed), one thread per worker, side by side in one run; Ray's start-up is
timed apart: it is paid once per study, not per trial. The inline executor using every core is shown for reference.
`--smoke` runs the same code with 2 trials of each kind and a few CNN steps, in seconds (tests).
"""

import argparse
import importlib.util
import os
import tempfile
import time

import torch

from trainlab.engine import Trial
from trainlab.spec import load_spec
from trainlab.study import expand, run_study
from trainlab.study.executor import ExecutorOptions

from common import add_smoke_flag, fixed


def tiny(trials: int, root: str) -> dict:
    return load_spec({"name": "noop", "task": {"name": "mnist-mlp", "source": "offline", "n_train": 64, "n_test": 64},
                      "arms": [{"optimizer": "sgd", "lr": 0.1}], "plan": {"steps": 1, "batch_size": 32},
                      "sweep": {"repeats": trials}, "output": {"root": root, "report": "none"}})


def busy(trials: int, root: str, steps: int = 600) -> dict:
    return load_spec({"name": "busy", "task": {"name": "mnist-cnn", "source": "offline", "n_train": 2000, "n_test": 500},
                      "arms": [{"optimizer": "adam", "lr": 0.01}], "plan": {"steps": steps, "batch_size": 64,
                                                                              "eval_every": max(1, steps // 3)},
                      "sweep": {"repeats": trials}, "output": {"root": root, "report": "none"}})


def pool_study(spec: dict, workers: int) -> None:
    """A study run through the process pool even with one worker (run_study goes inline then)."""
    from trainlab.study.executor import run_in_pool
    from trainlab.study.store import StudyStore
    from trainlab.study.trial import Extras

    plans = expand(spec)
    store = StudyStore.create(spec, plans)
    run_in_pool(store, plans, workers, quiet=True, on_done=lambda plan: None, extras=Extras(), threads=1)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--busy-trials", type=int, default=8)
    parser.add_argument("--busy-steps", type=int, default=600, help="CNN steps of each CPU-bound trial")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.busy_trials, args.busy_steps = 2, 2, 6
    with tempfile.TemporaryDirectory() as root:
        spec = tiny(args.trials, root)
        plans = expand(spec)
        Trial(plans[0].spec).run()  # warm caches for both sides
        direct = timed(lambda: [Trial(p.spec).run() for p in plans]) / len(plans)
        study = timed(lambda: run_study(spec, quiet=True)) / len(plans)
        busy_spec = busy(args.busy_trials, root, args.busy_steps)
        inline = timed(lambda: run_study(busy_spec, quiet=True))
        one = timed(lambda: pool_study(busy_spec, 1))  # one worker with one thread: the baseline
        two = timed(lambda: run_study(busy_spec, quiet=True, executor=ExecutorOptions("pool", workers=2, threads=1)))
        ray = startup = None
        if importlib.util.find_spec("ray") is not None:
            import ray as ray_lib

            startup = timed(lambda: ray_lib.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                                                 logging_level="ERROR"))
            ray = timed(lambda: run_study(busy_spec, quiet=True, executor=ExecutorOptions("ray", workers=2, threads=1)))
            ray_lib.shutdown()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| measurement | seconds | goal |")
    print("|---|---|---|")
    print(f"| no-op trial run directly | {fixed(direct, 3)} | - |")
    print(f"| no-op trial through a study (inline) | {fixed(study, 3)} | - |")
    print(f"| orchestration overhead per trial (store, hashing, executor) | {study - direct:.3f} | < 0.2 |")
    print(f"\n| {args.busy_trials} CPU-bound trials | seconds | trials / s | vs 1 worker |")
    print("|---|---|---|---|")
    print(f"| local pool, 1 worker (1 thread) | {one:.1f} | {args.busy_trials / one:.2f} | 1.00x |")
    print(f"| local pool, 2 workers (1 thread each) | {two:.1f} | {args.busy_trials / two:.2f} | {one / two:.2f}x "
          "(goal >= 1.7x) |")
    print(f"| inline, this process, all threads (reference) | {inline:.1f} | {args.busy_trials / inline:.2f} | "
          f"{one / inline:.2f}x |")
    if ray is not None:
        print(f"| local Ray, 2 workers (1 thread each) | {ray:.1f} | {args.busy_trials / ray:.2f} | "
              f"{one / ray:.2f}x ({ray / two:.2f}x the pool's time; goal <= 1.15x) |")
        print(f"\nStarting the local Ray instance took {startup:.1f} s more, once per study (not in the table).")


if __name__ == "__main__":
    main()
