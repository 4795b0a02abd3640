"""Blob diagnostics against the training they watch, at the reference-3blob sizes.

    .venv/bin/python benchmarks/bench_blobs.py [--steps 3] [--smoke]

Both are measured in this run: the epoch time is the mean time of `--steps` training steps
(fresh samples included) times the 30 steps of a reference-3blob epoch (300k samples, batch
10000); the diagnostic is the blobs probe at 5000 sampled pairs, and at all 524,288 pairs.
`--smoke` runs the same code on a 64-32 denoiser with small batches, in a few seconds (tests).
"""

import argparse
import time

import torch

from trainlab.engine import Trial
from trainlab.probes import blob_metrics
from trainlab.spec import load_spec

from common import add_smoke_flag, fixed

# a small denoiser, batch and sample: the same code paths in a few seconds
SMOKE_SETTINGS = ["task.dim=64", "task.hidden=32", "plan.batch_size=200", "task.samples_per_epoch=6000",
                  "task.n_val=200"]


def start_hooks(trial) -> None:
    """What trial.run does first: hooks set themselves up in on_start (the checkpoint event
    works out its save steps there), and steps driven by hand must not skip it."""
    for hook in trial.hooks:
        hook.on_start(trial)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps timed (after one warm-up step)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the sampled diagnostic")
    parser.add_argument("--pairs", type=int, default=5000, help="pairs of the sampled diagnostic")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.repeats, args.pairs = 1, 1, 500
    spec = load_spec("reference-3blob", ["probes=[]", *(SMOKE_SETTINGS if args.smoke else [])])
    trial = Trial(spec)
    arm = trial.arms[0]
    start_hooks(trial)

    def one_step(step):
        trial.indices, trial.step_batch = trial.next_batch()
        trial.forward_seed = step
        trial.train_step(arm, step)

    one_step(1)
    started = time.perf_counter()
    for step in range(2, args.steps + 2):
        one_step(step)
    step_time = (time.perf_counter() - started) / args.steps
    epoch_time = step_time * trial.stream.steps_per_epoch

    options = {"eps": "auto", "eps_scale": 3.0, "min_samples": 10, "silhouette_sample": 2000, "gmm": False,
               "gmm_max_components": 6}
    w1, w2 = arm.model.fc1.weight.detach(), arm.model.fc2.weight.detach()
    h, d = w1.shape
    generator = torch.Generator().manual_seed(0)

    def sampled():
        flat = torch.randperm(h * d, generator=generator)[:args.pairs]
        rows, cols = flat // d, flat % d
        x = torch.stack([w1[rows, cols], w2[cols, rows]], 1).double().numpy()
        return blob_metrics(x, options, 0)

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sampled()
        times.append(time.perf_counter() - t0)
    sample_time = sorted(times)[len(times) // 2]
    t0 = time.perf_counter()
    full = torch.stack([w1.reshape(-1), w2.t().reshape(-1)], 1).double().numpy()
    full_metrics = blob_metrics(full, options, 0)
    full_time = time.perf_counter() - t0

    print(f"reference-3blob: d {d}, h {h}, batch {spec['plan']['batch_size']}, "
          f"{trial.stream.steps_per_epoch} steps per epoch; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| measurement | seconds | share of one epoch |")
    print("|---|---|---|")
    print(f"| one training epoch ({args.steps} steps timed, x {trial.stream.steps_per_epoch}) | "
          f"{fixed(epoch_time, 2)} | 100% |")
    print(f"| blob diagnostics, {args.pairs:,} sampled pairs (median of {args.repeats}) | {fixed(sample_time, 3)} | "
          f"{sample_time / epoch_time:.3%} |")
    print(f"| blob diagnostics, all {full.shape[0]:,} pairs | {fixed(full_time, 2)} | {full_time / epoch_time:.1%} |")
    print(f"\ngoal: sampled diagnostics < 1% of an epoch (legacy claim < 5%); "
          f"all-pairs run found {full_metrics['clusters']} cluster(s) at initialisation")


if __name__ == "__main__":
    main()
