"""Blob diagnostics against the training they watch, at the reference-3blob sizes.

    .venv/bin/python benchmarks/bench_blobs.py [--steps 3]

Both are measured in this run: the epoch time is the mean time of `--steps` training steps
(fresh samples included) times the 30 steps of a reference-3blob epoch (300k samples, batch
10000); the diagnostic is the blobs probe at 5000 sampled pairs, and at all 524,288 pairs.
"""

import argparse
import time

import torch

from trainlab.engine import Trial
from trainlab.probes import blob_metrics
from trainlab.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps timed (after one warm-up step)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the sampled diagnostic")
    args = parser.parse_args()
    spec = load_spec("reference-3blob", ["probes=[]"])
    trial = Trial(spec)
    arm = trial.arms[0]

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
        flat = torch.randperm(h * d, generator=generator)[:5000]
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
    print(f"| one training epoch ({args.steps} steps timed, x {trial.stream.steps_per_epoch}) | {epoch_time:.2f} | 100% |")
    print(f"| blob diagnostics, 5,000 sampled pairs (median of {args.repeats}) | {sample_time:.3f} | "
          f"{sample_time / epoch_time:.3%} |")
    print(f"| blob diagnostics, all {full.shape[0]:,} pairs | {full_time:.2f} | {full_time / epoch_time:.1%} |")
    print(f"\ngoal: sampled diagnostics < 1% of an epoch (legacy claim < 5%); "
          f"all-pairs run found {full_metrics['clusters']} cluster(s) at initialisation")


if __name__ == "__main__":
    main()
