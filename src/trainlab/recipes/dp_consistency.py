"""`trainlab dp-consistency`: prove the DP-SGD modes agree, mode by mode.

    trainlab dp-consistency --modes no_dp per_sample ghost bk flash fused --model gpt-tiny llama-tiny

For each model, two regimes, each a few SGD steps from one initialisation on the same batches:

A  binding clip, no noise: sigma 0 and C the median per-sample gradient norm at the start,
   so about half the samples are clipped. Every DP mode must match `per_sample` in the
   per-sample norms, the clipped gradient, the loss trajectory and the final weights.
B  the legacy setting: sigma 0.01, C 1e4 (clipping never binds), every mode drawing its noise
   from a generator with the same seed. All DP modes must match `per_sample`, and `no_dp`
   plus the same noise (no_dp+noise) must match `per_sample`. The noise here is sigma*C/B = 12.5
   per coordinate at batch 8, so regime B steps with lr_b (1e-3): at regime A's rate the
   weights would be thrown into a chaotic region within two steps, where any two orders of
   float operations part ways, whatever the mode.

Differences are relative to the reference's largest magnitude; thresholds 1e-10 in float64,
1e-5 in float32. Outputs in the run folder: one JSON per model, regime and mode (loss and
gradient norm per step, per-sample norms, weight and gradient norms of every linear layer at
the first and last step), summary.json and summary.md (every mode, every quantity, mean / std
/ max difference, PASS or FAIL), and figures/<model>.png.
"""

import datetime as dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.mnist import load_mnist
from ..data.paths import find_data_file
from ..errors import UserError, check_known
from ..io import atomic_write_json, atomic_write_text
from ..models.zoo import MODEL_NAMES, zoo_model
from ..privacy import MODES, DPEngine, per_sample_loss
from ..privacy.engine import as_dtype
from ..plugin import register_command
from ..report.plotting import pyplot
from .flags import Command, add_common

IGNORE = -100
THRESHOLDS = {torch.float64: 1e-10, torch.float32: 1e-5}
QUANTITIES = ("per_sample_norms", "clipped_gradient", "loss", "final_weights")


@dataclass
class Problem:
    """A model factory and the batches every mode trains on."""
    name: str
    make: object
    batches: list
    source: str


def lm_batches(text_tokens: torch.Tensor, steps: int, batch: int, seq: int, vocab: int, generator) -> list:
    """Windows at seeded offsets; each sample's last 0..seq/4 targets are padding (ignore_index)."""
    out = []
    for _ in range(steps):
        starts = torch.randint(0, len(text_tokens) - seq - 1, (batch,), generator=generator)
        windows = torch.stack([text_tokens[s:s + seq + 1] for s in starts.tolist()]) % vocab
        x, y = windows[:, :-1].clone(), windows[:, 1:].clone()
        pad = torch.randint(0, seq // 4 + 1, (batch,), generator=generator)
        for i, n in enumerate(pad.tolist()):
            if n:
                y[i, -n:] = IGNORE
        out.append((x, y))
    return out


def text_tokens(generator) -> tuple[torch.Tensor, str]:
    """Bytes of tiny-shakespeare when it is in the data directory, else seeded random bytes."""
    path = find_data_file(["input.txt", "tinyshakespeare.txt"], ["tinyshakespeare", "shakespeare"])
    if path is not None:
        return torch.tensor(list(path.read_bytes()[:200_000]), dtype=torch.long), f"tiny-shakespeare bytes ({path})"
    return torch.randint(0, 256, (200_000,), generator=generator), "random bytes (tiny-shakespeare not found)"


def build_problem(name: str, steps: int, batch: int, seq: int, seed: int) -> Problem:
    """A zoo model (models/zoo.py) and `steps` batches for it: text windows for the language
    models, offline MNIST digits for the CNN."""
    check_known("--model", "model", [name], MODEL_NAMES)
    generator = torch.Generator().manual_seed(seed)
    try:
        make, vocab = zoo_model(name, seq)
    except ValueError as err:
        raise UserError(f"--model {name}: {err}") from None
    if vocab is None:  # the CNN
        data = load_mnist("offline", 4000, 1000)
        picks = [torch.randint(0, len(data.train.labels), (batch,), generator=generator) for _ in range(steps)]
        return Problem(name, make, [(data.train.images[i], data.train.labels[i]) for i in picks], data.source)
    tokens, source = text_tokens(generator)
    return Problem(name, make, lm_batches(tokens, steps, batch, seq, min(256, vocab), generator), source)


def linear_norms(model: nn.Module) -> dict:
    return {name: {"weight_norm": float(m.weight.detach().norm()),
                   "grad_norm": float(m.weight.grad.norm()) if m.weight.grad is not None else None}
            for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def run_mode(problem: Problem, mode: str, init: dict, dtype, C: float, sigma: float, seed: int, lr: float) -> dict:
    """Train a copy of the model for len(batches) SGD steps in one mode; keep what is compared."""
    model = problem.make().to(dtype)
    model.load_state_dict(init)
    engine = DPEngine(model, mode, max_grad_norm=C, noise_multiplier=sigma, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    log = {"mode": mode, "loss": [], "grad_norm": [], "per_sample_norms": [], "step_time_s": []}
    gradients = []
    for step, (x, y) in enumerate(problem.batches):
        x = as_dtype(x, dtype)
        started = time.perf_counter()
        result = engine.backward(x, y, per_sample_loss)
        log["step_time_s"].append(time.perf_counter() - started)
        flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        gradients.append(flat.detach().clone())
        log["loss"].append(result.loss)
        log["grad_norm"].append(float(flat.norm()))
        log["per_sample_norms"].append(result.norms.tolist() if result.norms is not None else None)
        if step == 0:
            log["first_step_linear"] = linear_norms(model)
        if step == len(problem.batches) - 1:
            log["last_step_linear"] = linear_norms(model)
        optimizer.step()
    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return {"log": log, "gradients": torch.stack(gradients), "weights": weights}


def median_norm(problem: Problem, init: dict, dtype) -> float:
    """The median per-sample gradient norm on the first batch at the initial weights."""
    model = problem.make().to(dtype)
    model.load_state_dict(init)
    x, y = problem.batches[0]
    return float(DPEngine(model, "per_sample").backward(as_dtype(x, dtype), y, per_sample_loss).norms.median())


def relative(a, b) -> np.ndarray:
    """|a - b| / max|b| per step (rows) or overall."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scale = b.abs().max().clamp(min=torch.finfo(torch.float64).tiny)
    diff = (a - b).abs()
    return (diff.reshape(len(diff), -1).max(1).values / scale).numpy() if diff.dim() > 1 else (diff / scale).numpy()


def compare(run: dict, ref: dict, threshold: float, with_norms: bool) -> dict:
    parts = {"clipped_gradient": relative(run["gradients"], ref["gradients"]),
             "loss": relative(run["log"]["loss"], ref["log"]["loss"]),
             "final_weights": relative(run["weights"][None], ref["weights"][None])}
    if with_norms:
        parts = {"per_sample_norms": relative(run["log"]["per_sample_norms"], ref["log"]["per_sample_norms"]), **parts}
    return {q: {"mean": float(np.mean(d)), "std": float(np.std(d)), "max": float(np.max(d)), "threshold": threshold,
                "pass": bool(np.max(d) <= threshold)} for q, d in parts.items()}


def check_modes(modes: list[str]) -> list[str]:
    check_known("--modes", "mode", modes, MODES)
    return list(dict.fromkeys(["per_sample", *modes]))  # the reference always runs


def run_suite(models: list[str], modes: list[str], steps: int = 5, seed: int = 42, dtype: str = "float64",
              batch: int = 8, seq: int = 32, lr: float = 0.1, lr_b: float = 1e-3, output_root: str = "runs", quiet: bool = False) -> Path:
    modes = check_modes(modes)
    torch_dtype = {"float64": torch.float64, "float32": torch.float32}.get(dtype)
    if torch_dtype is None:
        raise UserError(f"--dtype: must be float64 or float32, got {dtype!r}")
    for flag, value in (("--steps", steps), ("--batch-size", batch), ("--seq-len", seq)):
        if value < 1:
            raise UserError(f"{flag}: must be at least 1, got {value}")
    problems = [build_problem(name, steps, batch, seq, seed) for name in models]
    root = Path(output_root) / f"dp-consistency-{dt.datetime.now():%Y%m%d_%H%M%S}"
    root.mkdir(parents=True, exist_ok=False)
    rows, runs_by_model = [], {}
    for problem in problems:
        torch.manual_seed(seed)
        init = {k: v.to(torch_dtype) for k, v in problem.make().state_dict().items()}
        C = median_norm(problem, init, torch_dtype)
        regimes = {"A": (C, 0.0, lr), "B": (1e4, 0.01, lr_b)}
        runs_by_model[problem.name] = {}
        for regime, (clip, sigma, rate) in regimes.items():
            runs = {}
            for mode in modes:
                if not quiet:
                    print(f"{problem.name}: regime {regime}, {mode}", file=sys.stderr)
                runs[mode] = run_mode(problem, mode, init, torch_dtype, clip, sigma, seed, rate)
                folder = root / problem.name / f"regime_{regime}"
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_json(folder / f"{mode}.json", {"model": problem.name, "regime": regime, "C": clip,
                                                            "sigma": sigma, "dtype": dtype, "data": problem.source,
                                                            **runs[mode]["log"]})
            runs_by_model[problem.name][regime] = runs
            threshold = THRESHOLDS[torch_dtype]
            for mode in modes:
                if mode == "per_sample" or (mode == "no_dp" and regime == "A"):
                    continue  # no_dp is not expected to clip; it is the reference of regime B
                if mode == "no_dp":  # regime B: no_dp plus the same noise, against the DP reference
                    result = compare(runs["no_dp"], runs["per_sample"], threshold, with_norms=False)
                    mode = "no_dp+noise"
                else:
                    result = compare(runs[mode], runs["per_sample"], threshold, with_norms=True)
                for quantity, stats in result.items():
                    rows.append({"model": problem.name, "regime": regime, "mode": mode, "against": "per_sample",
                                 "quantity": quantity, **stats})
    summary = {"models": models, "modes": modes, "steps": steps, "seed": seed, "dtype": dtype, "batch": batch,
               "seq": seq, "lr": lr, "lr_b": lr_b, "rows": rows, "passed": all(r["pass"] for r in rows)}
    atomic_write_json(root / "summary.json", summary)
    atomic_write_text(root / "summary.md", summary_markdown(summary, problems))
    figures(root, runs_by_model)
    return root


def summary_markdown(summary: dict, problems: list[Problem]) -> str:
    lines = [f"# DP consistency: {'PASS' if summary['passed'] else 'FAIL'}", "",
             f"Models {', '.join(summary['models'])}; modes {', '.join(summary['modes'])}; {summary['steps']} steps, "
             f"batch {summary['batch']}, sequence {summary['seq']}, {summary['dtype']}, seed {summary['seed']}, "
             f"SGD lr {summary['lr']} (regime A) and {summary['lr_b']} (regime B).", ""]
    lines += [f"- data for {p.name}: {p.source}" for p in problems]
    lines += ["", "Regime A: sigma 0, C = median per-sample norm at the start (binding). Regime B: sigma 0.01, "
              "C 1e4, shared noise seed. Differences are relative to the reference's largest magnitude.", "",
              "| model | regime | mode | against | quantity | mean diff | std | max diff | threshold | result |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['model']} | {r['regime']} | {r['mode']} | {r['against']} | {r['quantity']} | "
                     f"{r['mean']:.2e} | {r['std']:.2e} | {r['max']:.2e} | {r['threshold']:.0e} | "
                     f"{'PASS' if r['pass'] else 'FAIL'} |")
    lines += [""] + [f"![{name}](figures/{name}.png)" for name in summary["models"]]
    return "\n".join(lines) + "\n"


def figures(root: Path, runs_by_model: dict) -> None:
    plt = pyplot()
    (root / "figures").mkdir(exist_ok=True)
    for model, regimes in runs_by_model.items():
        fig, axes = plt.subplots(len(regimes), 3, figsize=(15, 3.8 * len(regimes)), squeeze=False)
        for row, (regime, runs) in zip(axes, regimes.items()):
            for i, (mode, run) in enumerate(runs.items()):
                style = dict(label=mode, marker="o", linestyle=["-", "--", ":", "-."][i % 4], alpha=0.8)
                row[0].plot(run["log"]["loss"], **style)
                row[1].plot(run["log"]["grad_norm"], **style)
            names = list(runs)
            row[2].bar(names, [runs[m]["log"]["loss"][-1] for m in names], color="tab:blue")
            row[0].set(title=f"{model}, regime {regime}: loss", xlabel="step")
            row[1].set(title="gradient norm before the step", xlabel="step", yscale="log")
            row[2].set(title="final loss")
            row[2].tick_params(axis="x", rotation=30)
            row[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(root / "figures" / f"{model}.png", dpi=90)
        plt.close(fig)


# ---------------------------------------------------------------- the command


def arguments(parser) -> None:
    parser.add_argument("--modes", nargs="+", default=list(MODES), metavar="MODE",
                        help=f"{' '.join(MODES)} (default: all)")
    parser.add_argument("--model", nargs="+", default=["gpt-tiny", "llama-tiny"], metavar="NAME",
                        help=" ".join(MODEL_NAMES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dtype", default="float64", help="float64 (threshold 1e-10) or float32 (1e-5)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--output-root", default="runs", metavar="DIR")
    add_common(parser)


def run_command(args) -> int:
    root = run_suite(args.model, args.modes, args.steps, args.seed, args.dtype, args.batch_size, args.seq_len,
                     output_root=args.output_root, quiet=args.quiet)
    summary = (root / "summary.md").read_text()
    print(summary)
    print(root)
    return 0 if "# DP consistency: PASS" in summary else 1


register_command("dp-consistency", Command("prove the DP-SGD clipping modes agree (regimes A and B)", arguments,
                                           run_command))
