"""Step time and peak memory of each DP mode against a non-private step (and Opacus).

    trainlab dp-profile --model gpt-256 --batch-size 16 --seq-len 128 [--device cuda]

The step is SGD on the per-sample loss. Step times are medians over `rounds` rounds in which
every mode steps once, in rotating order, in one process (each mode on its own copy of the
model), so a slow spell of a shared machine hits every mode alike. Peak memory is measured
for each mode in a fresh process, so one mode's memory never counts against another: the
growth of the CUDA allocator's peak (GPU) or of the resident set (CPU) over two steps, on
top of the weights; the memory ratio compares weights + that peak. Rows:

    non_dp        forward, mean loss, backward, optimizer step: the baseline
    no_dp ...     trainlab's engine in each mode, then the optimizer step
    opacus_hooks  Opacus 1.x GradSampleModule hooks (when Opacus is installed)
    opacus_ghost  Opacus ghost clipping (when Opacus is installed)
"""

import concurrent.futures as cf
import importlib.util
import logging
import multiprocessing as mp
import statistics
import time
import traceback
from pathlib import Path

import torch

from ..errors import UserError, check_known
from ..io import atomic_write_text
from ..models.zoo import MODEL_NAMES
from ..plugin import register_command
from ..privacy import MODES
from ..privacy.engine import Budget, DPEngine, capture, per_sample_loss
from ..privacy.norms import norm_dtype
from ..report.plotting import pyplot, save_figure
from .batch_size import PeakRSS
from .dp_consistency import build_problem
from .flags import Command, add_common

log = logging.getLogger(__name__)

BASELINE = "non_dp"
OPACUS = ("opacus_hooks", "opacus_ghost")


def setup(shape: dict, mode: str):
    """A model (same initial weights for every mode), its batches, and one training step."""
    device = torch.device(shape["device"])
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[shape["dtype"]]
    torch.manual_seed(0)
    problem = build_problem(shape["model"], 2, shape["batch"], shape["seq"], seed=0)
    model = problem.make().to(device, dtype)
    batches = [(x.to(device, dtype) if x.is_floating_point() else x.to(device), y.to(device))
               for x, y in problem.batches]
    return model, batches, make_step(mode, model, shape)


def error_text(exc: Exception) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1].name if exc.__traceback__ else ""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}" + (f" ({where})" if where else "")


def time_modes(shape: dict, modes: list[str], rounds: int) -> dict:
    """Median step time of every mode, measured round-robin in this process so that a slow
    spell of the machine hits every mode alike."""
    steps, out = {}, {}
    for mode in modes:
        try:
            model, batches, step = setup(shape, mode)
            for x, y in batches:  # warm-up; a mode that fails here is reported, not timed
                step(x, y)
            steps[mode] = (step, batches[0], sum(p.numel() for p in model.parameters()))
        except Exception as exc:  # Opacus refusing a model is a result, not a crash of the profile
            out[mode] = {"error": error_text(exc)}
    times = {mode: [] for mode in steps}
    device = torch.device(shape["device"])
    for r in range(rounds):
        order = list(steps)[r % max(1, len(steps)):] + list(steps)[:r % max(1, len(steps))]
        for mode in order:
            step, (x, y), _ = steps[mode]
            synchronize(device)
            started = time.perf_counter()
            step(x, y)
            synchronize(device)
            times[mode].append(time.perf_counter() - started)
    for mode, (_, _, params) in steps.items():
        out[mode] = {"step_ms": 1000 * statistics.median(times[mode]), "params": params, "error": None}
    return out


def peak_memory(shape: dict, mode: str) -> dict:
    """Peak memory of two steps of one mode, in a fresh process."""
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(_peak_memory, shape, mode).result()
        except cf.process.BrokenProcessPool:
            return {"error": "the process died (out of memory?)"}


def _peak_memory(shape: dict, mode: str) -> dict:
    if shape.get("threads"):
        torch.set_num_threads(shape["threads"])
    try:
        model, batches, step = setup(shape, mode)
        memory = Memory(torch.device(shape["device"]))
        memory.start()
        for x, y in batches:
            step(x, y)
        synchronize(torch.device(shape["device"]))
    except Exception as exc:
        return {"error": error_text(exc)}
    return {"peak_bytes": memory.peak(), "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def make_step(mode: str, model, job: dict):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    if mode == BASELINE:
        def step(x, y):
            optimizer.zero_grad(set_to_none=True)
            per_sample_loss(model(x), y).mean().backward()
            optimizer.step()
        return step
    if mode in OPACUS:
        return opacus_step(mode, model, optimizer, job)
    engine = DPEngine(model, mode, max_grad_norm=1.0, noise_multiplier=1.0, seed=0)

    def step(x, y):
        engine.backward(x, y, per_sample_loss)
        optimizer.step()
    return step


def opacus_step(mode: str, model, optimizer, job: dict):
    from opacus import PrivacyEngine

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(job["batch"], 1)),
                                         batch_size=job["batch"])
    criterion = torch.nn.CrossEntropyLoss(ignore_index=-100)
    private = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
        poisson_sampling=False, grad_sample_mode="hooks" if mode == "opacus_hooks" else "ghost",
        **({"criterion": criterion} if mode == "opacus_ghost" else {}))
    module, opt = private[0], private[1]
    if mode == "opacus_ghost":
        loss_fn = private[2]

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            out = module(x)  # sequences: flat logits, and `shape` so Opacus averages per sequence
            if out.dim() == 3:
                loss_fn(out.reshape(-1, out.shape[-1]), y.reshape(-1), shape=out.shape[:2]).backward()
            else:
                loss_fn(out, y).backward()
            opt.step()
        return step

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        per_sample_loss(module(x), y).mean().backward()
        opt.step()
    return step


def breakdown(shape: dict, rounds: int = 10) -> dict:
    """Median milliseconds of each piece of a `bk` step next to a non-private step's forward and
    backward, on one batch: where the extra time of DP-SGD goes."""
    model, batches, _ = setup(shape, BASELINE)
    x, y = batches[0]
    device = torch.device(shape["device"])
    engine = DPEngine(model, "bk", max_grad_norm=1.0, noise_multiplier=1.0, seed=0)
    params = [p for _, p in engine.params]
    times: dict[str, list[float]] = {}

    def timed(name, fn):
        synchronize(device)
        started = time.perf_counter()
        out = fn()
        synchronize(device)
        times.setdefault(name, []).append(1000 * (time.perf_counter() - started))
        return out

    for r in range(rounds + 1):  # the first round warms up
        loss = timed("forward", lambda: per_sample_loss(model(x), y).sum())
        timed("backward, all gradients (non-private)", lambda: torch.autograd.grad(loss, params))
        records = {}
        with capture(model, engine.rules, records, fused=False, method="auto", tile=256, budget=Budget(None)):
            loss = per_sample_loss(model(x), y).sum()
            grads = timed("backward to the layer outputs (bk)", lambda: torch.autograd.grad(
                loss, [rec.target for rec in records.values()]))

        def norms():
            for rec, g in zip(records.values(), grads):
                rec.grad = g.to(norm_dtype(g.dtype))
                rec.norm_sq, rec.cache = rec.rule.norms_sq(rec.module, rec.inputs, rec.grad, rec.keys, "auto", 256)
        timed("per-sample norms", norms)
        c = torch.rand(len(y), device=device)
        timed("clipped sums", lambda: [rec.rule.clipped(rec.module, rec.inputs, rec.grad, c, rec.keys, rec.cache)
                                       for rec in records.values()])
        timed("noise", lambda: engine._noise({n: p for n, p in engine.params}))
        if r == 0:
            times.clear()
    return {name: statistics.median(values) for name, values in times.items()}


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Memory:
    def __init__(self, device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.rss = PeakRSS()

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return self.rss.growth()


def profile(models: list[str], batches: list[int], seqs: list[int], modes: list[str], device: str = "cpu",
            rounds: int = 10, dtype: str = "float32", threads: int | None = None, memory: bool = True,
            quiet: bool = False) -> list[dict]:
    if threads:
        torch.set_num_threads(threads)
    rows = []
    modes = [BASELINE, *[m for m in modes if m != BASELINE]]
    for model in models:
        for batch in batches:
            for seq in seqs:
                shape = {"model": model, "batch": batch, "seq": seq, "device": device, "dtype": dtype,
                         "threads": threads}
                if not quiet:
                    log.info(f"{model} batch {batch} seq {seq}: timing {len(modes)} modes x {rounds} rounds")
                timing = time_modes(shape, modes, rounds)
                for mode in modes:
                    row = {**shape, "mode": mode, **timing[mode]}
                    if memory and row["error"] is None:
                        if not quiet:
                            log.info(f"  peak memory: {mode}")
                        row.update(peak_memory(shape, mode))
                    rows.append(row)
                add_ratios([r for r in rows if (r["model"], r["batch"], r["seq"]) == (model, batch, seq)])
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Time and memory of each mode over the non-private step of the same shape; memory is the
    weights plus the step's own peak (activations, gradients, per-sample terms)."""
    base = next(r for r in rows if r["mode"] == BASELINE)
    for row in rows:
        ok = row.get("error") is None and base.get("error") is None
        row["time_ratio"] = row["step_ms"] / base["step_ms"] if ok else None
        row["memory_ratio"] = ((row["weight_bytes"] + row["peak_bytes"]) / (base["weight_bytes"] + base["peak_bytes"])
                               if ok and "peak_bytes" in row and "peak_bytes" in base else None)


def markdown(rows: list[dict]) -> str:
    lines = ["| model | params | batch | seq | mode | step (ms) | vs non_dp | peak memory (MiB) | vs non_dp |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['model']} | | {r['batch']} | {r['seq']} | {r['mode']} | failed: {r['error']} | | | |")
            continue
        ratio = "" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}x"
        mem = "" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}x"
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in r else "not measured"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['seq']} | {r['mode']} | "
                     f"{r['step_ms']:.1f} | {ratio} | {peak} | {mem} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path) -> None:
    plt = pyplot()
    ok = [r for r in rows if not r.get("error")]
    shapes = list(dict.fromkeys((r["model"], r["batch"], r["seq"]) for r in ok))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(1, len(shapes))
    modes = list(dict.fromkeys(r["mode"] for r in ok))
    for k, shape in enumerate(shapes):
        by_mode = {r["mode"]: r for r in ok if (r["model"], r["batch"], r["seq"]) == shape}
        xs = [i + k * width for i in range(len(modes))]
        label = f"{shape[0]} b{shape[1]} T{shape[2]}"
        axes[0].bar(xs, [by_mode[m]["time_ratio"] or 0 if m in by_mode else 0 for m in modes], width, label=label)
        axes[1].bar(xs, [by_mode[m]["memory_ratio"] or 0 if m in by_mode else 0 for m in modes], width, label=label)
    for ax, title in zip(axes, ("step time vs non_dp", "peak memory vs non_dp")):
        ax.set_xticks([i + width * (len(shapes) - 1) / 2 for i in range(len(modes))], modes, rotation=30)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set(title=title, ylabel="ratio")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the command


def arguments(parser) -> None:
    parser.add_argument("--modes", nargs="+", default=list(MODES), metavar="MODE",
                        help=f"DP modes ({' '.join(MODES)}), plus {' '.join(OPACUS)} when Opacus is installed")
    parser.add_argument("--model", nargs="+", default=["gpt-tiny", "gpt-256"], metavar="NAME", help=" ".join(MODEL_NAMES))
    parser.add_argument("--batch-size", type=int, nargs="+", default=[16], metavar="B")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[128], metavar="T")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per mode (round-robin)")
    parser.add_argument("--output", default="dp_profile.md", metavar="FILE", help="markdown table; the figure beside it")
    add_common(parser)


def run_command(args) -> int:
    check_known("--modes", "mode", args.modes, (*MODES, *OPACUS))
    check_known("--model", "model", args.model, MODEL_NAMES)
    if args.dtype not in ("float32", "bfloat16"):
        raise UserError(f"--dtype: must be float32 or bfloat16, got {args.dtype!r}")
    if min(args.batch_size + args.seq_len + [args.rounds]) < 1:
        raise UserError("--batch-size, --seq-len and --rounds: must be at least 1")
    if any(m in OPACUS for m in args.modes) and importlib.util.find_spec("opacus") is None:
        raise UserError("--modes opacus_*: Opacus is not installed (pip install 'trainlab[dp]')")
    output = Path(args.output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output {args.output!r}: cannot create its folder: {exc.strerror}") from None
    rows = profile(args.model, args.batch_size, args.seq_len, args.modes, args.device, args.rounds, args.dtype,
                   quiet=args.quiet)
    figure_path = output.with_suffix(".png")
    figure(rows, figure_path)
    text = (f"# DP step time and memory\n\ntorch {torch.__version__}, device {args.device}, "
            f"{args.dtype}, median of {args.rounds} round-robin steps.\n\n" + markdown(rows)
            + f"\n![profile]({figure_path.name})\n")
    atomic_write_text(output, text)
    print(text)
    return 0


register_command("dp-profile", Command("step time and peak memory of each DP mode vs a non-private step", arguments,
                                       run_command))
