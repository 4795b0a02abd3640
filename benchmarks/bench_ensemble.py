"""Many-runs ensembles: R runs of the 386-parameter MLP (batch 64, float64, SGD) trained as one
batched computation, against the plain loop that trains one model at a time with
torch.optim.SGD on data already in memory, side by side in one run (alternating rounds,
medians); then the full job.

    .venv/bin/python benchmarks/bench_ensemble.py [--runs 1000] [--steps 100] [--full-steps 1111] [--smoke]

`--smoke` runs the same code with 8 runs of a few steps, in seconds (tests).
"""

import argparse
import os
import statistics
import time

import torch

from trainlab.engine.ensemble import run_ensemble
from trainlab.models import PooledMLP
from trainlab.recipes.fault_recovery import default_source
from trainlab.spec import load_spec

from common import add_smoke_flag, fixed


def spec_for(steps: int) -> dict:
    return load_spec({"seed": 0, "task": {"name": "mnist-mlp", "source": default_source()},
                      "arms": [{"optimizer": "sgd", "lr": 0.05}],
                      "plan": {"steps": steps, "batch_size": 64, "dtype": "float64", "eval_every": 10**6}})


def plain_loop(runs: int, steps: int, spec: dict) -> float:
    """One model at a time: torch.optim.SGD, images in memory, a fresh permutation per epoch."""
    from trainlab.engine import Trial

    trial = Trial(spec)
    x, y = trial.x_train, trial.y_train
    started = time.perf_counter()
    for r in range(runs):
        torch.manual_seed(r)
        model = PooledMLP().double()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        generator = torch.Generator().manual_seed(r)
        perm = torch.randperm(len(y), generator=generator)
        for step in range(steps):
            start = (step * 64) % (len(y) - 63)
            idx = perm[start:start + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100, help="steps of the side-by-side subset")
    parser.add_argument("--loop-runs", type=int, default=40, help="runs the plain loop is timed on (scaled to --runs)")
    parser.add_argument("--rounds", type=int, default=3, help="alternate the two this many times; medians are shown")
    parser.add_argument("--full-steps", type=int, default=1111)
    parser.add_argument("--data-dir")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.steps, args.loop_runs, args.rounds, args.full_steps = 8, 10, 2, 1, 20
    if args.data_dir:
        os.environ["TRAINLAB_DATA"] = os.path.abspath(args.data_dir)
    spec = spec_for(args.steps)
    loops, batches = [], []
    for _ in range(args.rounds):  # alternating, so a slow spell of a shared machine hits both alike
        loops.append(plain_loop(args.loop_runs, args.steps, spec) * args.runs / args.loop_runs)
        started = time.perf_counter()
        run_ensemble(spec, args.runs, method="vmap", evaluate=False)  # the plain loop does not evaluate either
        batches.append(time.perf_counter() - started)
    loop, batched = statistics.median(loops), statistics.median(batches)
    rate = lambda seconds: args.runs * args.steps / seconds  # noqa: E731
    print(f"386-parameter MLP, batch 64, float64, SGD; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| method | runs x steps | seconds | run-steps / s | speed-up |")
    print("|---|---|---|---|---|")
    print(f"| plain loop, one model at a time (timed on {args.loop_runs} runs, scaled; median of {args.rounds}) | {args.runs} x {args.steps} | "
          f"{fixed(loop, 1)} | {rate(loop):,.0f} | 1.0x |")
    print(f"| trainlab batched (median of {args.rounds}) | {args.runs} x {args.steps} | {fixed(batched, 1)} | {rate(batched):,.0f} | "
          f"{fixed(loop / batched, 1)}x |", flush=True)
    started = time.perf_counter()
    run_ensemble(spec_for(args.full_steps), args.runs, method="vmap", evaluate=False)
    full = time.perf_counter() - started
    print(f"| trainlab batched, full job | {args.runs} x {args.full_steps} | {fixed(full, 1)} | "
          f"{args.runs * args.full_steps / full:,.0f} | - |")
    print("\ngoals: at least 30x the plain loop's run-steps per second; the full job in under 60 s")


if __name__ == "__main__":
    main()
