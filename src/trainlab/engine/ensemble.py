"""Many independent runs of one small model, trained as one batched computation.

Run r has its own seed (spec seed + r, or `seeds[r]`): its own batch order, drawn exactly as
the plain trainer draws it, and its own initial weights (or all runs start from
plan.init_from). Parameters of all runs are stacked ([R, ...]) and one vmapped
forward/backward serves every run; the optimizers are functional re-implementations of
torch.optim.SGD (momentum, nesterov, dampening, weight decay) and Adam/AdamW that match
them update for update. A model with a parameter-free `features` stage (the pooled MLP)
has that stage applied once to the whole dataset. BatchNorm trains on each run's batch
statistics and keeps each run's running statistics (batched buffers, updated in place).
Other optimizers fall back to a plain loop of single-run trials with the same outputs.
Attention runs on the math backend in batched runs: the fused CPU kernel has no batching
rule for its backward, and vmap would loop over the runs one by one.
"""

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..data.samplers import IndexStream
from ..errors import SpecError
from ..io import Anchor, anchor_at
from ..optim import lr_factor
from .trainer import Trial, derive_seed

BATCHED_OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass
class EnsembleResult:
    seeds: list[int]
    losses: np.ndarray  # [R, steps] training loss per run and step
    eval_first: dict = field(default_factory=dict)  # {"loss": [R], "accuracy": [R]} before training
    eval_last: dict = field(default_factory=dict)  # after the last step
    weights: np.ndarray | None = None  # [R, len(record_steps), P], memory-mapped when written to disk
    buffers: dict = field(default_factory=dict)  # {name: [R, ...]} after the last step (BatchNorm statistics)
    record_steps: list[int] = field(default_factory=list)
    method: str = "vmap"


def batchable(optimizer: str) -> bool:
    return optimizer in BATCHED_OPTIMIZERS


def run_ensemble(spec: dict, runs: int, seeds: list[int] | None = None, record_steps: list[int] | None = None,
                 out_dir: Anchor | Path | None = None, method: str = "auto", evaluate: bool = True,
                 progress=None) -> EnsembleResult:
    """Train `runs` copies of the spec's single arm, each with its own seed; with `evaluate`,
    held-out loss and accuracy of every run before the first and after the last step. The
    recorded weights go to `out_dir`/weights.npy (a study's folder as an io.Anchor), which
    appears whole when the runs end."""
    if len(spec["arms"]) != 1:
        raise SpecError("arms", "a many-runs ensemble trains exactly one arm")
    arm = spec["arms"][0]
    seeds = seeds or [spec["seed"] + r for r in range(runs)]
    trial = Trial(spec)
    if trial.generated or trial.x_train is None or isinstance(trial.x_train, dict):
        raise SpecError("task.name", "many-runs ensembles need a fixed training set of tensors in memory")
    record_steps = sorted(set(record_steps or []))
    if method == "auto":
        method = "vmap" if batchable(arm["optimizer"]) else "loop"
    if method == "vmap" and not batchable(arm["optimizer"]):
        raise SpecError("arms.0.optimizer", f"batched runs support {', '.join(BATCHED_OPTIMIZERS)}; use method 'loop'")
    with contextlib.ExitStack() as files:
        weights = None
        if record_steps:
            size = sum(p.numel() for p in trial.arms[0].model.parameters())
            shape = (len(seeds), len(record_steps), size)
            weights = np.zeros(shape) if out_dir is None else npy_memmap(
                files.enter_context((anchor_at(out_dir) / "weights.npy").creating()), shape)
        runner = batched_runs if method == "vmap" else looped_runs
        if progress is not None:  # batched runs advance all runs a step at a time; the loop, a run at a time
            progress.total = trial.total_steps if method == "vmap" else len(seeds)
            progress.unit = "step" if method == "vmap" else "run"
        result = runner(trial, arm, seeds, record_steps, weights, progress, evaluate)
        result.record_steps, result.method = record_steps, method
        if isinstance(weights, np.memmap):
            weights.flush()
    return result


def npy_memmap(fh, shape: tuple) -> np.memmap:
    """A float64 .npy array of `shape` in the new, empty file `fh`, mapped to memory (larger
    than memory is fine: the OS pages it out), as np.lib.format.open_memmap makes one."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float64)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(fh, header)
    fh.flush()
    return np.memmap(fh, dtype=np.float64, mode="r+", offset=fh.tell(), shape=shape)


# ---------------------------------------------------------------- the plain loop


def looped_runs(trial: Trial, arm: dict, seeds, record_steps, weights, progress, evaluate=True) -> EnsembleResult:
    """One single-run trial after another (any model, any optimizer)."""
    losses = np.zeros((len(seeds), trial.total_steps))
    first, last, buffers = {"loss": [], "accuracy": []}, {"loss": [], "accuracy": []}, {}
    for r, seed in enumerate(seeds):
        run = Trial({**trial.spec, "seed": seed, "events": [], "probes": []})
        state = run.arms[0]
        for key, value in (run.evaluate_model(state.model) if evaluate else {}).items():
            first.setdefault(key, []).append(value)
        for step in range(1, run.total_steps + 1):
            run.step = step
            run.indices, run.step_batch = run.next_batch()
            run.forward_seed = derive_seed(seed, "forward", step)
            run.train_step(state, step)
            losses[r, step - 1] = state.last_train.get("loss", math.nan) if state.alive else math.nan
            if step in record_steps:
                weights[r, record_steps.index(step)] = flat_params(state.model)
        for key, value in (run.evaluate_model(state.model) if evaluate else {}).items():
            last.setdefault(key, []).append(value)
        for name, value in state.model.named_buffers():
            buffers.setdefault(name, []).append(value.detach().cpu().numpy())
        if progress is not None:
            progress.update(1)
    return EnsembleResult(seeds, losses, {k: np.array(v) for k, v in first.items()},
                          {k: np.array(v) for k, v in last.items()}, weights, {k: np.stack(v) for k, v in buffers.items()})


def flat_params(model: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().cpu().numpy()


# ---------------------------------------------------------------- batched


class BatchedStreams:
    """The index streams of every run, drawn exactly as each run's own IndexStream would."""

    def __init__(self, n: int, batch_size: int, sampler: str, seeds: list[int]):
        self.streams = [IndexStream(n, batch_size, sampler, derive_seed(s, "data")) for s in seeds]
        self.sampler, self.batch_size, self.n = sampler, batch_size, n
        self.epoch: torch.Tensor | None = None  # [R, batches, B] for the shuffle sampler
        self.position = 0

    def next_batch(self) -> torch.Tensor:
        """[R, B] sample indices (the full set for the 'full' sampler)."""
        if self.sampler == "shuffle":
            if self.epoch is None or self.position == self.epoch.shape[1]:
                usable = (self.n // self.batch_size) * self.batch_size
                perms = torch.stack([torch.randperm(self.n, generator=s.generator)[:usable] for s in self.streams])
                self.epoch = perms.view(len(self.streams), -1, self.batch_size)
                self.position = 0
            self.position += 1
            return self.epoch[:, self.position - 1]
        return torch.stack([s.next_batch() for s in self.streams])


def batched_runs(trial: Trial, arm: dict, seeds, record_steps, weights, progress, evaluate=True) -> EnsembleResult:
    template = trial.arms[0].model
    staged = hasattr(template, "features")  # the pooled MLP: pool the whole dataset once
    net = template.net if staged else template
    params, buffers = initial_states(trial, seeds, staged)
    names = list(params)
    x_train, y_train, x_test, y_test = trial.x_train, trial.y_train, trial.x_test, trial.y_test
    if staged:
        with torch.no_grad():
            x_train, x_test = template.features(x_train), template.features(x_test)
    task, options = trial.task, trial.options

    def loss_of(p, b, x, y):
        return task.loss(functional_call(net, (p, b), (x,)), y, opts=options)

    step_fn = vmap(grad_and_value(loss_of), in_dims=(0, 0, 0, 0))
    layers = silu_mlp_layers(net) if task.is_cross_entropy(options) and not task.is_language_model(options) else None
    if layers is not None:  # the hand-written batched MLP: no vmap or autograd machinery per step
        step_fn = lambda p, b, x, y: mlp_grad_and_loss(layers, p, x, y)  # noqa: E731
    optimizer = FunctionalOptimizer(arm, params)
    streams = BatchedStreams(trial.data.n_train, trial.plan["batch_size"], trial.plan["sampler"], seeds)
    losses = np.zeros((len(seeds), trial.total_steps))
    first = evaluate_all(net, params, buffers, x_test, y_test, task, options) if evaluate else {}
    for step in range(1, trial.total_steps + 1):
        index = streams.next_batch().to(x_train.device)
        if trial.plan["sampler"] == "full":
            x, y = x_train.expand(len(seeds), *x_train.shape), y_train.expand(len(seeds), *y_train.shape)
        else:  # index_select on the flat indices is cheaper than advanced indexing here
            flat_index = index.reshape(-1)
            x = x_train.index_select(0, flat_index).view(*index.shape, *x_train.shape[1:])
            y = y_train.index_select(0, flat_index).view(*index.shape, *y_train.shape[1:])
        with sdpa_kernel(SDPBackend.MATH):
            grads, loss = step_fn(params, buffers, x, y)
        losses[:, step - 1] = loss.detach().cpu().numpy()
        optimizer.step(params, grads, lr_factor(arm["schedule"], step - 1, trial.total_steps))
        if step in record_steps:
            weights[:, record_steps.index(step)] = torch.cat(
                [params[k].reshape(len(seeds), -1) for k in names], dim=1).double().cpu().numpy()
        if progress is not None:
            progress.update(1)
    last = evaluate_all(net, params, buffers, x_test, y_test, task, options) if evaluate else {}
    final_buffers = {k: v.detach().cpu().numpy() for k, v in buffers.items()}
    return EnsembleResult(seeds, losses, first, last, weights, final_buffers)


def initial_states(trial: Trial, seeds: list[int], staged: bool) -> tuple[dict, dict]:
    """Stacked initial parameters and buffers of every run, as Trial.initial_model builds them.

    Building a thousand modules is slow, so when the model's only random draws are its
    layers' reset_parameters() in module order, one float32 template is re-initialised per
    seed instead; the first run is checked against a fully built model before this is used."""
    pick = (lambda m: m.net) if staged else (lambda m: m)
    if trial.plan["init_from"]:
        shared = pick(trial.initial_model(seeds[0]))
        return ({k: v.detach().unsqueeze(0).expand(len(seeds), *v.shape).clone() for k, v in shared.named_parameters()},
                {k: v.unsqueeze(0).expand(len(seeds), *v.shape).clone() for k, v in shared.named_buffers()})
    reference = trial.initial_model(seeds[0])
    with torch.random.fork_rng(devices=[]):
        template = trial.task.make_model(trial.options, trial.data)
        layers = [m for m in template.modules() if hasattr(m, "reset_parameters")]

        def draw(seed: int) -> dict:
            torch.default_generator.manual_seed(derive_seed(seed, "init"))
            for layer in layers:
                layer.reset_parameters()
            return {k: v.detach().clone() for k, v in pick(template).named_parameters()}

        def convert(t: torch.Tensor) -> torch.Tensor:  # once for the stack, not per run
            return t.to(device=trial.device, dtype=trial.dtype)

        first = draw(seeds[0])
        if all(torch.equal(convert(first[k]), v) for k, v in pick(reference).named_parameters()):
            runs = [first] + [draw(seed) for seed in seeds[1:]]
            params = {k: convert(torch.stack([run[k] for run in runs])) for k in first}
            buffers = {k: v.unsqueeze(0).expand(len(seeds), *v.shape).clone() for k, v in pick(reference).named_buffers()}
            return params, buffers
    params, buffers = stack_module_state([pick(trial.initial_model(seed)) for seed in seeds])
    return {k: v.detach() for k, v in params.items()}, buffers


def silu_mlp_layers(net: nn.Module) -> list[str] | None:
    """Parameter-name prefixes of Linear layers when `net` is Linear, SiLU, ..., Linear; else None."""
    if not isinstance(net, nn.Sequential) or len(net) % 2 == 0:
        return None
    for i, module in enumerate(net):
        if not isinstance(module, nn.Linear if i % 2 == 0 else nn.SiLU) or (i % 2 == 0 and module.bias is None):
            return None
    return [str(i) for i in range(0, len(net), 2)]


@torch.no_grad()
def mlp_grad_and_loss(layers: list[str], params: dict, x: torch.Tensor, y: torch.Tensor):
    """Gradients and mean cross-entropy of every run of a SiLU MLP, by hand with batched matmuls.
    x [R, B, in], y [R, B]; returns ({name: [R, ...]}, loss [R]). The elementwise work uses
    the fused kernels autograd itself calls for SiLU (silu, silu_backward): one pass each over
    the [R, B, width] activations, which is where much of a step's time goes."""
    inputs, pre = [x], []
    for i, name in enumerate(layers):
        z = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), inputs[-1], params[f"{name}.weight"].transpose(1, 2))
        if i < len(layers) - 1:
            pre.append(z)
            inputs.append(F.silu(z))
    # softmax and log-softmax from one exp (torch's log_softmax over 10 classes is several
    # times slower here): shifted = z - max, p = e / sum e, log p = shifted - log sum e
    shifted = z.sub_(z.amax(dim=2, keepdim=True))
    dz = shifted.exp()
    total = dz.sum(dim=2, keepdim=True)
    target = y.unsqueeze(2)
    loss = (total.log().squeeze(2) - shifted.gather(2, target).squeeze(2)).mean(dim=1)
    dz /= total  # probabilities; cross-entropy's gradient is (p - onehot) / B
    dz.scatter_add_(2, target, torch.full(target.shape, -1.0, dtype=dz.dtype, device=dz.device))
    dz /= y.shape[1]
    grads = {}
    for i in range(len(layers) - 1, -1, -1):
        name = layers[i]
        grads[f"{name}.weight"] = torch.bmm(dz.transpose(1, 2), inputs[i])
        grads[f"{name}.bias"] = dz.sum(dim=1)
        if i > 0:
            dz = torch.ops.aten.silu_backward(torch.bmm(dz, params[f"{name}.weight"]), pre[i - 1])
    return grads, loss


@contextlib.contextmanager
def eval_mode(net: nn.Module):
    """BatchNorm on its running statistics (and no dropout) while evaluating; restored after."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


@torch.no_grad()
def evaluate_all(net, params, buffers, x, y, task, options, chunk: int = 128) -> dict:
    """Held-out loss and accuracy of every run (the same data for all)."""
    def one(p, b, xs, ys):
        out = functional_call(net, (p, b), (xs,))
        hits, _ = task.count_correct(out, ys)
        return task.loss(out, ys, reduction="sum", opts=options), hits

    total = torch.zeros(next(iter(params.values())).shape[0], dtype=torch.float64)
    correct = torch.zeros_like(total)
    with eval_mode(net), sdpa_kernel(SDPBackend.MATH):
        for start in range(0, len(y), chunk):
            xs, ys = x[start:start + chunk], y[start:start + chunk]
            loss, hits = vmap(one, in_dims=(0, 0, None, None))(params, buffers, xs, ys)
            total += loss.double().cpu()
            correct += hits.double().cpu()
    items = task.loss_items(y)  # samples (tokens for a language model): the same count accuracy is over
    return {"loss": (total / items).numpy(), "accuracy": (correct / items).numpy()}


class FunctionalOptimizer:
    """SGD (momentum, dampening, nesterov, weight decay) and Adam/AdamW on stacked parameters,
    in the same order of operations as torch.optim's single-tensor implementations."""

    def __init__(self, arm: dict, params: dict):
        self.arm, self.kind = arm, arm["optimizer"]
        self.state = {k: {} for k in params}
        self.t = 0

    @torch.no_grad()
    def step(self, params: dict, grads: dict, factor: float) -> None:
        self.t += 1
        lr, a = self.arm["lr"] * factor, self.arm
        for name, p in params.items():
            g, state = grads[name], self.state[name]
            if self.kind == "sgd":
                if a["weight_decay"]:
                    g = g.add(p, alpha=a["weight_decay"])
                if a["momentum"]:
                    if "buf" not in state:
                        state["buf"] = g.clone()
                    else:
                        state["buf"].mul_(a["momentum"]).add_(g, alpha=1 - a["dampening"])
                    g = g.add(state["buf"], alpha=a["momentum"]) if a["nesterov"] else state["buf"]
                p.add_(g, alpha=-lr)
            else:
                if self.kind == "adamw":
                    p.mul_(1 - lr * a["weight_decay"])
                elif a["weight_decay"]:
                    g = g.add(p, alpha=a["weight_decay"])
                if "m" not in state:
                    state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
                    if a["amsgrad"]:
                        state["vmax"] = torch.zeros_like(p)
                state["m"].lerp_(g, 1 - a["beta1"])
                state["v"].mul_(a["beta2"]).addcmul_(g, g, value=1 - a["beta2"])
                correction1 = 1 - a["beta1"] ** self.t
                correction2 = 1 - a["beta2"] ** self.t
                v = state["v"]
                if a["amsgrad"]:
                    torch.maximum(state["vmax"], v, out=state["vmax"])
                    v = state["vmax"]
                denom = (v.sqrt() / math.sqrt(correction2)).add_(a["eps"])
                p.addcdiv_(state["m"], denom, value=-lr / correction1)
