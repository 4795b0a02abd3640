"""Lock-step trainer overhead: trainlab's Trial vs a hand-written torch loop doing the same work.

Both train the same arms (sgd, adam, muon) on the same batches of the offline MNIST digits,
evaluating on the held-out split at the same cadence; the table shows the cost per arm-step
and the ratio. Run: .venv/bin/python benchmarks/bench_trainer.py [--steps 600] [--repeats 3] [--smoke]
(`--smoke`: 50 steps, once, so that evaluation still runs: the same code in seconds, for tests.)
"""

import argparse
import copy
import time

import torch

from trainlab.engine import Trial
from trainlab.optim import build_optimizer
from trainlab.spec import load_spec

from common import add_smoke_flag


def make_spec(steps: int, dtype: str, hidden: int) -> dict:
    return load_spec({
        "task": {"name": "mnist-mlp", "source": "offline", "n_train": 4000, "n_test": 1000, "hidden": [hidden]},
        "arms": [{"optimizer": "sgd", "lr": 0.1, "momentum": 0.9}, {"optimizer": "adam", "lr": 0.01},
                 {"optimizer": "muon", "lr": 0.02}],
        "plan": {"steps": steps, "batch_size": 64, "dtype": dtype, "eval_every": 50},
    })


def plain_loop(spec: dict) -> float:
    """What a one-off script would do: same data, same batches, same optimizers, no records."""
    trial = Trial(spec)  # only for its data, initial weights and optimizers
    models = [copy.deepcopy(arm.model) for arm in trial.arms]
    # Muon reads each parameter's role from a forward pass: the same example inputs the trainer gives it
    example = trial.example_inputs()
    optimizers = [build_optimizer(arm.spec, m, example, trial.registries) for arm, m in zip(trial.arms, models)]
    loss_fn = torch.nn.functional.cross_entropy
    start = time.perf_counter()
    for step in range(1, spec["plan"]["steps"] + 1):
        idx = trial.stream.next_batch()
        x, y = trial.x_train[idx], trial.y_train[idx]
        for model, opt in zip(models, optimizers):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            loss.item()
        if step % spec["plan"]["eval_every"] == 0:
            with torch.no_grad():
                for model in models:
                    model.eval()
                    loss_fn(model(trial.x_test), trial.y_test).item()
                    model.train()
    return time.perf_counter() - start


class NullSink:
    def log(self, record):
        self.last = record

    def flush(self):
        pass


def trainlab_trial(spec: dict) -> float:
    trial = Trial(spec, sink=NullSink())
    start = time.perf_counter()
    trial.run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.repeats = 50, 1  # 50: one evaluation at eval_every, as in a real run
    torch.set_num_threads(torch.get_num_threads())
    print("| dtype | hidden | plain loop (us/arm-step) | trainlab (us/arm-step) | ratio trainlab/plain |")
    print("|---|---|---|---|---|")
    for dtype, hidden in [("float32", 8), ("float64", 8), ("float32", 128)]:
        spec = make_spec(args.steps, dtype, hidden)
        plain = min(plain_loop(spec) for _ in range(args.repeats))
        ours = min(trainlab_trial(spec) for _ in range(args.repeats))
        per = 1e6 / (args.steps * len(spec["arms"]))
        print(f"| {dtype} | {hidden} | {plain * per:.0f} | {ours * per:.0f} | {ours / plain:.2f}x |")


if __name__ == "__main__":
    main()
