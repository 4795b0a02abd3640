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
1e-5 in float32.

It is a study like any other (trainlab/study): one trial per model, regime and mode, each a
`dp-consistency` job; a mode's trial runs after its reference's and compares itself with the
reference's saved gradients and weights. So the suite runs in every executor, resumes with
`trainlab resume` after a kill, and `trainlab report` rebuilds its summary. Each trial's
folder holds run.json (loss and gradient norm per step, per-sample norms, weight and gradient
norms of every linear layer at the first and last step, the comparison); the study holds
summary.json and summary.md (every mode, every quantity, mean / std / max difference, PASS or
FAIL; final loss and mean gradient norm per mode) and figures/<model>.png.
"""

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from ..data.mnist import load_mnist
from ..data.paths import find_data_file
from ..errors import UserError, check_known
from ..io import Anchor, anchor_at, read_json, read_text
from ..models.zoo import MODEL_NAMES, zoo_model
from ..options import Strict
from ..plugin import register_command, register_job, register_report
from ..privacy import MODES, DPEngine, per_sample_loss
from ..privacy.engine import as_dtype
from ..report.plotting import pyplot, save_figure
from ..study import run_study
from ..study.store import StudyStore
from .flags import Command, add_common, add_workers, executor_of

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
    """Weight and gradient norm of every Linear (gathered from the shards of a sharded model:
    every rank must call it)."""
    return {name: {"weight_norm": float(whole(m.weight.detach()).norm()),
                   "grad_norm": float(whole(m.weight.grad).norm()) if m.weight.grad is not None else None}
            for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter or gradient gathered whole; a plain tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def run_mode(problem: Problem, mode: str, init: dict, dtype, C: float, sigma: float, seed: int, lr: float,
             sink=None) -> dict:
    """Train a copy of the model for len(batches) SGD steps in one mode; keep what is compared
    (and stream a train record per step to `sink`)."""
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
        if sink is not None:
            sink.log({"kind": "train", "arm": mode, "step": step + 1, "loss": result.loss, "grad_norm": log["grad_norm"][-1]})
            sink.flush()
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


# ---------------------------------------------------------------- a mode sharded over processes (FSDP2)


def shard(model: nn.Module, mesh) -> None:
    """FSDP2 as transformer recipes apply it: each block of every ModuleList its own unit, then
    the root (which keeps embeddings, tied heads and norms together)."""
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def sharded_rank(rank: int, world: int, options: dict, seed: int, C: float, sigma: float, lr: float,
                 folder: Anchor, backend: str) -> None:
    """One rank: the same model and batches as the reference, its contiguous share of every
    batch, the model sharded; rank 0 writes what the comparison needs (gathered)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    o = SuiteOptions(**options)
    torch.set_num_threads(max(1, torch.get_num_threads() // world))  # the ranks share the machine's cores
    device = torch.device("cpu")
    store = dist.FileStore(str(folder.path / "rendezvous"), world)  # a path, so a relative study root works
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    try:
        dtype = DTYPES[o.dtype]
        problem = build_problem(o.model, o.steps, o.batch, o.seq, seed)
        torch.manual_seed(seed)
        model = problem.make().to(dtype)  # the same initial weights as the reference's
        model.to(device)
        shard(model, init_device_mesh(device.type, (world,)))
        engine = DPEngine(model, o.mode, max_grad_norm=C, noise_multiplier=sigma, seed=seed,
                          expected_batch_size=o.batch)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        log = {"mode": o.mode, "loss": [], "grad_norm": [], "per_sample_norms": [], "step_time_s": []}
        gradients = []
        for step, (x, y) in enumerate(problem.batches):
            share = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
            started = time.perf_counter()
            result = engine.backward(as_dtype(x[share], dtype).to(device), y[share].to(device), per_sample_loss)
            log["step_time_s"].append(time.perf_counter() - started)
            losses, norms = [None] * world, [None] * world
            dist.all_gather_object(losses, result.losses.tolist())
            dist.all_gather_object(norms, result.norms.tolist() if result.norms is not None else [])
            flat = torch.cat([whole(p.grad).reshape(-1) for p in model.parameters()]).cpu()
            gradients.append(flat)
            log["loss"].append(float(np.mean([v for part in losses for v in part])))
            log["grad_norm"].append(float(flat.norm()))
            log["per_sample_norms"].append([v for part in norms for v in part] or None)
            if step == 0:
                log["first_step_linear"] = linear_norms(model)
            if step == len(problem.batches) - 1:
                log["last_step_linear"] = linear_norms(model)
            optimizer.step()
        weights = torch.cat([whole(p.detach()).reshape(-1) for p in model.parameters()]).cpu()
        if rank == 0:
            (folder / "sharded.pt").save_torch({"log": log, "gradients": torch.stack(gradients), "weights": weights})
        dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()
    # Done: leave without the interpreter's shutdown, where a gloo or OpenMP thread still being
    # torn down now and then aborts the process (SIGABRT, "terminate called without an active
    # exception") after its work is complete and saved.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_mode_sharded(o: "SuiteOptions", seed: int, C: float, sigma: float, lr: float, folder: Anchor | Path,
                     sink=None) -> dict:
    """`o.mode` over o.fsdp CPU processes talking over gloo, each with its share of every batch;
    the gathered result in run_mode's form. (The suite and its reference run on the CPU: the
    regime-B noise is drawn from a CPU generator, which a GPU rank would not reproduce.)"""
    import torch.multiprocessing as mp

    backend = "gloo"
    folder = anchor_at(folder)
    for stale in ("rendezvous", "sharded.pt"):  # a killed earlier attempt's files (or links planted there)
        (folder / stale).unlink()
    options = o.model_dump()
    mp.spawn(sharded_rank, args=(o.fsdp, options, seed, C, sigma, lr, folder, backend), nprocs=o.fsdp, join=True)
    run = torch.load(folder.path / "sharded.pt", weights_only=True)
    for name in ("rendezvous", "sharded.pt"):
        (folder / name).unlink()
    run["log"]["backend"] = backend
    if sink is not None:
        for step, (loss, norm) in enumerate(zip(run["log"]["loss"], run["log"]["grad_norm"])):
            sink.log({"kind": "train", "arm": o.mode, "step": step + 1, "loss": loss, "grad_norm": norm})
        sink.flush()
    return run


def check_modes(modes: list[str]) -> list[str]:
    check_known("--modes", "mode", modes, MODES)
    return list(dict.fromkeys(["per_sample", *modes]))  # the reference always runs


# ---------------------------------------------------------------- one trial: a model, a regime, a mode

DTYPES = {"float64": torch.float64, "float32": torch.float32}


class SuiteOptions(Strict):
    model: str = Field("gpt-tiny", description=" ".join(MODEL_NAMES))
    regime: Literal["A", "B"] = "A"
    mode: str = Field("per_sample", description=" ".join(MODES))
    steps: int = Field(5, gt=0)
    dtype: Literal["float64", "float32"] = "float64"
    batch: int = Field(8, gt=0)
    seq: int = Field(32, gt=0)
    lr: float = Field(0.1, gt=0, description="SGD learning rate of regime A")
    lr_b: float = Field(1e-3, gt=0, description="SGD learning rate of regime B")
    fsdp: int = Field(0, ge=0, le=64, description="shard each DP mode over this many processes with FSDP2 "
                                                 "(0: one process; the per_sample reference always runs whole)")

    @model_validator(mode="after")
    def _shares(self):
        if self.fsdp == 1:
            raise ValueError("fsdp: 0 (one process) or 2 to 64 processes, not 1")
        if self.fsdp > self.batch:  # a rank without samples would skip the collectives the others wait in
            raise ValueError(f"fsdp: {self.fsdp} processes need a batch of at least {self.fsdp} samples "
                             f"(batch {self.batch})")
        return self


class SuiteJob:
    """Train one model in one regime with one mode; a mode other than the reference compares
    itself with the reference trial it runs after."""

    @staticmethod
    def check(spec: dict) -> None:
        o = spec["job"]
        check_known("--modes", "mode", [o["mode"]], MODES)
        check_known("--model", "model", [o["model"]], MODEL_NAMES)

    @staticmethod
    def run(spec: dict, context) -> dict:
        o, seed = SuiteOptions(**{k: v for k, v in spec["job"].items() if k not in ("kind", "after")}), spec["seed"]
        place = context.place or anchor_at(context.folder)  # the trial's files, written inside the study only
        dtype = DTYPES[o.dtype]
        problem = build_problem(o.model, o.steps, o.batch, o.seq, seed)
        torch.manual_seed(seed)
        init = {k: v.to(dtype) for k, v in problem.make().state_dict().items()}
        C, sigma, lr = (median_norm(problem, init, dtype), 0.0, o.lr) if o.regime == "A" else (1e4, 0.01, o.lr_b)
        if o.fsdp and o.mode != "per_sample":
            run = run_mode_sharded(o, seed, C, sigma, lr, place, context.sink)
        else:
            run = run_mode(problem, o.mode, init, dtype, C, sigma, seed, lr, context.sink)
        record = {"model": o.model, "regime": o.regime, "mode": o.mode, "C": C, "sigma": sigma, "dtype": o.dtype,
                  "processes": o.fsdp if o.fsdp and o.mode != "per_sample" else 1,
                  "data": problem.source, "final_loss": run["log"]["loss"][-1],
                  "mean_grad_norm": float(np.mean(run["log"]["grad_norm"]))}
        if context.inputs:  # the reference's gradients and weights, saved by its own trial
            reference = torch.load(next(iter(context.inputs.values())) / "tensors.pt", weights_only=True)
            regime_b_plain = o.mode == "no_dp"  # regime B: no_dp plus the same noise, against the DP reference
            record["against"] = "per_sample"
            record["comparison"] = compare(run, reference, THRESHOLDS[dtype], with_norms=not regime_b_plain)
            record["compared_as"] = "no_dp+noise" if regime_b_plain else o.mode
        else:
            (place / "tensors.pt").save_torch({
                "gradients": run["gradients"], "weights": run["weights"],
                "log": {"loss": run["log"]["loss"], "per_sample_norms": run["log"]["per_sample_norms"]}})
        record["backend"] = run["log"].get("backend")
        (place / "run.json").write_json({**record, **run["log"]})
        return record


register_job("dp-consistency", SuiteJob, Options=SuiteOptions, doc="one model, regime and DP mode of the suite")


def suite_spec(models: list[str], modes: list[str], steps: int = 5, seed: int = 42, dtype: str = "float64",
               batch: int = 8, seq: int = 32, lr: float = 0.1, lr_b: float = 1e-3, output_root: str = "runs",
               fsdp: int = 0) -> dict:
    """One trial per model, regime and mode; the per_sample reference first, every other mode
    after it (regime A has no no_dp trial: no_dp is not expected to clip)."""
    modes = check_modes(modes)
    if dtype not in DTYPES:
        raise UserError(f"--dtype: must be float64 or float32, got {dtype!r}")
    for flag, value in (("--steps", steps), ("--batch-size", batch), ("--seq-len", seq)):
        if value < 1:
            raise UserError(f"{flag}: must be at least 1, got {value}")
    check_known("--model", "model", models, MODEL_NAMES)
    if fsdp == 1 or fsdp < 0 or fsdp > 64:
        raise UserError(f"--fsdp: 0 (one process) or 2 to 64 processes, got {fsdp}")
    if fsdp and batch < fsdp:  # SuiteOptions says the same for a spec written by hand
        raise UserError(f"--fsdp: {fsdp} processes need a batch of at least {fsdp} samples (--batch-size {batch})")
    points = []
    for model in models:
        for regime in ("A", "B"):
            reference = len(points)
            points.append({"job.model": model, "job.regime": regime, "job.mode": "per_sample", "job.after": []})
            points += [{"job.model": model, "job.regime": regime, "job.mode": mode, "job.after": [reference]}
                       for mode in modes if mode != "per_sample" and not (mode == "no_dp" and regime == "A")]
    return {"name": "dp-consistency", "seed": seed,
            "job": {"kind": "dp-consistency", "model": models[0], "steps": steps, "dtype": dtype, "batch": batch,
                    "seq": seq, "lr": lr, "lr_b": lr_b, "fsdp": fsdp},
            "sweep": {"points": points},
            "output": {"root": output_root, "report": "dp-consistency", "trial_dir": "trials/{index:03d}"}}


def run_suite(models: list[str], modes: list[str], steps: int = 5, seed: int = 42, dtype: str = "float64",
              batch: int = 8, seq: int = 32, lr: float = 0.1, lr_b: float = 1e-3, output_root: str = "runs",
              quiet: bool = False, executor=None, fsdp: int = 0) -> Path:
    spec = suite_spec(models, modes, steps, seed, dtype, batch, seq, lr, lr_b, output_root, fsdp)
    return run_study(spec, quiet=quiet, executor=executor)


# ---------------------------------------------------------------- the report


def build_suite_report(study_dir) -> Path:
    """summary.json, summary.md and a figure per model, from the trials' run.json."""
    store = StudyStore.open(study_dir)
    runs = []
    for index, folder in store.trial_dirs():
        try:
            runs.append(read_json(folder / "run.json"))
        except (OSError, ValueError):
            continue  # not finished (yet)
    job = store.spec["job"]
    models = list(dict.fromkeys(p["job.model"] for p in store.spec["sweep"]["points"]))
    rows = [{"model": r["model"], "regime": r["regime"], "mode": r["compared_as"], "against": r["against"],
             "quantity": quantity, **stats} for r in runs if "comparison" in r for quantity, stats in r["comparison"].items()]
    expected = len(store.meta.get("trials", []))
    summary = {"models": models, "modes": list(dict.fromkeys(p["job.mode"] for p in store.spec["sweep"]["points"])),
               "steps": job["steps"], "seed": store.spec["seed"], "dtype": job["dtype"], "batch": job["batch"],
               "seq": job["seq"], "lr": job["lr"], "lr_b": job["lr_b"], "fsdp": job.get("fsdp", 0),
               "trials": expected, "finished": len(runs), "rows": rows,
               "per_mode": [{**{k: r[k] for k in ("model", "regime", "mode", "final_loss", "mean_grad_norm")},
                             "processes": r.get("processes", 1), "backend": r.get("backend")} for r in runs],
               "passed": len(runs) == expected and all(r["pass"] for r in rows)}
    store.write_json("summary.json", summary)
    figures(store.place("figures"), runs)
    sources = {r["model"]: r["data"] for r in runs}
    return store.write_text("summary.md", summary_markdown(summary, sources))


def summary_markdown(summary: dict, sources: dict) -> str:
    lines = [f"# DP consistency: {'PASS' if summary['passed'] else 'FAIL'}", "",
             f"Models {', '.join(summary['models'])}; modes {', '.join(summary['modes'])}; {summary['steps']} steps, "
             f"batch {summary['batch']}, sequence {summary['seq']}, {summary['dtype']}, seed {summary['seed']}, "
             f"SGD lr {summary['lr']} (regime A) and {summary['lr_b']} (regime B).", ""]
    if summary.get("fsdp"):
        lines += [f"Every mode but the per_sample reference ran sharded with FSDP2 over {summary['fsdp']} processes, "
                  "each with its share of every batch; its gradients and weights are gathered from the shards "
                  "before they are compared with the one-process reference.", ""]
    if summary["finished"] < summary["trials"]:
        lines += [f"**Incomplete:** {summary['finished']} of {summary['trials']} trials finished "
                  "(`trainlab resume` runs the rest).", ""]
    lines += [f"- data for {model}: {source}" for model, source in sources.items()]
    lines += ["", "Regime A: sigma 0, C = median per-sample norm at the start (binding). Regime B: sigma 0.01, "
              "C 1e4, shared noise seed. Differences are relative to the reference's largest magnitude.", "",
              "| model | regime | mode | against | quantity | mean diff | std | max diff | threshold | result |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['model']} | {r['regime']} | {r['mode']} | {r['against']} | {r['quantity']} | "
                     f"{r['mean']:.2e} | {r['std']:.2e} | {r['max']:.2e} | {r['threshold']:.0e} | "
                     f"{'PASS' if r['pass'] else 'FAIL'} |")
    lines += ["", "Per mode: final loss and mean gradient norm over the steps.", "",
              "| model | regime | mode | processes | final loss | mean gradient norm |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['regime']} | {r['mode']} | {r.get('processes', 1)}"
              f"{' (' + r['backend'] + ')' if r.get('backend') else ''} | {r['final_loss']:.10g} | "
              f"{r['mean_grad_norm']:.6g} |" for r in summary["per_mode"]]
    lines += [""] + [f"![{name}](figures/{name}.png)" for name in summary["models"]]
    return "\n".join(lines) + "\n"


def figures(folder: Anchor, runs: list[dict]) -> None:
    """Per model and regime: loss and gradient norm per step by mode, and each mode's final loss
    as its difference from the reference's, on a log scale (differences of 1e-16 are visible)."""
    plt = pyplot()
    for model in dict.fromkeys(r["model"] for r in runs):
        regimes = {regime: [r for r in runs if r["model"] == model and r["regime"] == regime] for regime in ("A", "B")}
        regimes = {k: v for k, v in regimes.items() if v}
        fig, axes = plt.subplots(len(regimes), 3, figsize=(15, 3.8 * len(regimes)), squeeze=False)
        for row, (regime, group) in zip(axes, regimes.items()):
            reference = next((r for r in group if r["mode"] == "per_sample"), None)
            for i, r in enumerate(group):
                style = dict(label=r["mode"], marker="o", linestyle=["-", "--", ":", "-."][i % 4], alpha=0.8)
                row[0].plot(range(1, len(r["loss"]) + 1), r["loss"], **style)
                row[1].plot(range(1, len(r["grad_norm"]) + 1), r["grad_norm"], **style)
            others = [r for r in group if r["mode"] != "per_sample"]
            if reference is not None and others:
                gaps = [max(abs(r["final_loss"] - reference["final_loss"]), 1e-18) for r in others]
                row[2].bar([r["mode"] for r in others], gaps, color="tab:blue")
                row[2].set(yscale="log", title="|final loss - per_sample's| (log)")
            row[0].set(title=f"{model}, regime {regime}: loss", xlabel="step")
            row[1].set(title="gradient norm before the step", xlabel="step", yscale="log")
            row[2].tick_params(axis="x", rotation=30)
            row[0].legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, folder / f"{model}.png", dpi=90)
        plt.close(fig)


register_report("dp-consistency", build_suite_report, doc="summary.md of the DP consistency suite")


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
    parser.add_argument("--fsdp", type=int, default=0, metavar="N",
                        help="run every DP mode sharded with FSDP2 over N CPU processes (gloo) against the "
                             "one-process per_sample reference")
    parser.add_argument("--output-root", default="runs", metavar="DIR")
    add_workers(parser)
    add_common(parser)


def run_command(args) -> int:
    root = run_suite(args.model, args.modes, args.steps, args.seed, args.dtype, args.batch_size, args.seq_len,
                     output_root=args.output_root, quiet=args.quiet, executor=executor_of(args), fsdp=args.fsdp)
    summary = read_text(root / "summary.md" if (root / "summary.md").exists() else build_suite_report(root))
    print(summary)
    print(root)
    return 0 if "# DP consistency: PASS" in summary else 1


register_command("dp-consistency", Command("prove the DP-SGD clipping modes agree (regimes A and B)", arguments,
                                           run_command))
