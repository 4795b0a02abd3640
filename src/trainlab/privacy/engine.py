"""DP-SGD gradients: clip each sample's gradient, sum, add Gaussian noise, normalise.

    engine = DPEngine(model, mode="bk", max_grad_norm=1.0, noise_multiplier=1.1, seed=0)
    result = engine.backward(inputs, targets, per_sample_loss)   # sets p.grad
    optimizer.step()

Every mode computes the same thing:

    grad = (sum_i c_i g_i + noise_multiplier * C * z) / B,   c_i = min(1, C / (||g_i|| + 1e-6))

with g_i the gradient of sample i's loss (`per_sample_loss`: the mean over its valid
positions), z ~ N(0, I) from the engine's own seeded generator, and B the expected batch
size (the batch's own size unless given). The modes differ in cost:

    no_dp       the plain mean gradient (plus the same noise when noise_multiplier > 0)
    per_sample  reference: per-sample gradients materialised with torch.func (any model)
    ghost       per-sample norms from activations and output gradients, then a second
                backward of sum_i c_i loss_i
    bk          book-keeping: one backward to the layer outputs, norms and the clipped
                gradient (A^T diag(c) G per layer, or sum_i c_i grad_i from per-sample
                gradients kept within `cache_elements`) from what the hooks kept
    flash       bk with every Linear norm computed in T-tiles: memory does not grow with T^2
    fused       the Linear norms accumulated inside the Linear layer's own backward
                (PyTorch path); other layers as bk

Per-layer clipping gives each of the L layers the threshold C / sqrt(L), so the total
sensitivity stays C. With `distributed=True` each rank clips its own samples, the clipped
sums are all-reduced, and every rank then adds the same noise (same seed): noise is added
once and no per-sample quantity crosses ranks.

A model sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`) works the same way and
turns `distributed` on by itself: the hooks see each layer's full weight while it runs, the
clipped sums and the noise are formed as for DDP, and each rank keeps its own shard of
them as the parameters' gradients. Under FSDP2 autograd cannot reach the sharded
parameters, so `no_dp` and `ghost` form their sums from the layers' inputs and output
gradients (as `bk` does) and `per_sample` is refused.
"""

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from ..models.outputs import forward, model_output
from .checks import check_layout, check_no_mixing, check_rule, check_supported, check_uses
from .norms import Budget, norm_dtype
from .fused import fused_forward
from .rules import rule_of
from .rules.linear import LinearRule

MODES = ("no_dp", "per_sample", "ghost", "bk", "flash", "fused")
CLIPPING = ("flat", "per_layer")
HOOK_MODES = ("ghost", "bk", "flash", "fused")
STABILITY = 1e-6  # in the clip factor min(1, C / (norm + 1e-6))


def per_sample_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy per sample: [B, classes] -> [B]; for sequences [B, T, V] the mean over the
    sample's positions whose target is not `ignore_index` (0 when it has none)."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, targets, reduction="none", ignore_index=ignore_index)
    token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none",
                            ignore_index=ignore_index).view(targets.shape)
    valid = (targets != ignore_index).to(token.dtype)
    dims = tuple(range(1, targets.dim()))
    return (token * valid).sum(dims) / valid.sum(dims).clamp(min=1)


def clip_factors(norms: torch.Tensor, threshold: float) -> torch.Tensor:
    return (threshold / (norms + STABILITY)).clamp(max=1.0)


@dataclass
class StepResult:
    losses: torch.Tensor  # [B] per-sample losses
    norms: torch.Tensor | None  # [B] per-sample gradient norms (before clipping)
    factors: torch.Tensor | None  # [B] clip factors (flat) or [B, L] (per layer)
    output: torch.Tensor | None = None  # the model's output for the batch (detached)

    @property
    def loss(self) -> float:
        return float(self.losses.mean())


@dataclass
class Record:
    module: nn.Module
    rule: type
    keys: tuple  # the module's trainable parameters: only these take part in norms and sums
    inputs: torch.Tensor | None = None
    output: torch.Tensor | None = None
    input_fn: object = None  # the autograd node that made the input: where the module's own graph ends
    grad: torch.Tensor | None = None
    target: torch.Tensor | None = None  # what autograd is asked for: the output, or a fused layer's anchor
    norm_sq: dict | None = None  # filled by the fused backward
    cache: dict | None = None  # per-sample gradients kept for the clipped sum


class DPEngine:
    def __init__(self, model: nn.Module, mode: str = "bk", max_grad_norm: float = 1.0, noise_multiplier: float = 0.0,
                 clipping: str = "flat", seed: int = 0, expected_batch_size: int | None = None,
                 norm_method: str = "auto", tile: int = 256, distributed: bool = False,
                 cache_elements: int = 2**28):
        if mode not in MODES:
            raise UserError(f"mode: unknown DP mode {mode!r} (allowed: {', '.join(MODES)})")
        if clipping not in CLIPPING:
            raise UserError(f"clipping: must be {' or '.join(CLIPPING)}, got {clipping!r}")
        if max_grad_norm <= 0 or noise_multiplier < 0:
            raise UserError("max_grad_norm must be > 0 and noise_multiplier >= 0")
        self.model, self.mode, self.C, self.sigma = model, mode, float(max_grad_norm), float(noise_multiplier)
        self.clipping, self.expected_batch_size, self.distributed = clipping, expected_batch_size, distributed
        self.norm_method = "tiled" if mode == "flash" else norm_method
        self.tile, self.cache_elements = tile, cache_elements
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.layers = owning_layers(model)
        self.rules = {name: rule_of(module) for name, module in model.named_modules()}  # looked up once
        self.layouts: set = set()  # input shapes whose batch dimension has been established
        self.verified: set = set()  # modules whose rule has been checked against autograd
        self.sharded = any(is_sharded(p) for _, p in self.params)
        if self.sharded:
            if mode == "per_sample":
                raise UserError("mode per_sample cannot run on an FSDP-sharded model (torch.func needs whole "
                                "parameters); use bk, flash, fused, ghost or no_dp")
            self.distributed = True  # sharded parameters imply ranks with their own samples
        if mode in HOOK_MODES or self.sharded:
            check_supported(model, mode)
        device = self.params[0][1].device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    # -- the step -----------------------------------------------------------------------------

    def backward(self, inputs, targets, loss_fn: Callable = per_sample_loss) -> StepResult:
        """Set every parameter's .grad to this batch's DP gradient; return losses and norms."""
        for _, p in self.params:
            p.grad = None
        if self.mode != "no_dp":
            check_no_mixing(self.model, self.mode)
        if len(targets) == 0:  # an empty Poisson batch: the update is noise alone
            result = StepResult(torch.zeros(0), None, None)
            sums = {n: torch.zeros(p.shape, dtype=p.dtype, device=p.device) for n, p in self.params}  # full size
        elif self.mode == "no_dp" and not self.sharded:
            result, sums = self._plain(inputs, targets, loss_fn)
        elif self.mode == "per_sample":
            result, sums = self._per_sample(inputs, targets, loss_fn)
        else:
            result, sums = self._hooked(inputs, targets, loss_fn)
        for name, p in self.params:  # a parameter this batch did not reach: zero (full size, also when sharded)
            if name not in sums:
                sums[name] = torch.zeros(p.shape, dtype=p.dtype, device=p.device)
        batch = self.expected_batch_size or len(result.losses)
        if self.distributed:
            batch = self.expected_batch_size or self._global_batch(len(result.losses))
            self._all_reduce(sums)
        if batch == 0:
            raise UserError("DP step on an empty batch: give expected_batch_size (with Poisson sampling the "
                            "expected batch size) so the noise has a divisor")
        noise = self._noise(sums) if self.sigma > 0 else None
        offset = 0
        for name, p in self.params:
            grad = sums[name]
            if noise is not None:  # in place: the sums are ours (fresh tensors, or views of the all-reduced buffer)
                grad = grad.add_(noise[offset:offset + grad.numel()].view_as(grad), alpha=self.sigma * self.C)
                offset += grad.numel()
            p.grad = shard_like(p, grad.div_(batch).to(p.dtype))
        return result

    def _noise(self, sums: dict) -> torch.Tensor:
        """z ~ N(0, I) for every parameter, drawn as one buffer in parameter order."""
        first = sums[self.params[0][0]]
        total = sum(p.numel() for _, p in self.params)
        return torch.empty(total, device=first.device, dtype=first.dtype).normal_(generator=self.generator)

    def _plain(self, inputs, targets, loss_fn):
        output = forward(self.model, inputs)
        losses = loss_fn(output, targets)
        return StepResult(losses.detach(), None, None, output.detach()), self._param_grads(losses.sum())

    def _param_grads(self, loss: torch.Tensor) -> dict:
        """d loss / d parameter for every parameter (zeros for one the loss does not reach)."""
        grads = torch.autograd.grad(loss, [p for _, p in self.params], allow_unused=True)
        return {n: g if g is not None else torch.zeros_like(p) for (n, p), g in zip(self.params, grads)}

    def _per_sample(self, inputs, targets, loss_fn):
        from torch.func import functional_call, grad_and_value, vmap

        params = {n: p.detach() for n, p in self.params}
        buffers = dict(self.model.named_buffers())

        def loss_one(params, x, y):
            out = model_output(functional_call(self.model, (params, buffers), (x.unsqueeze(0),)))
            return loss_fn(out, y.unsqueeze(0)).squeeze(0)

        with warnings.catch_warnings():  # vmap falls back to a loop for some kernels (attention): slower, not wrong
            warnings.filterwarnings("ignore", message="There is a performance drop")
            grads, losses = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0), randomness="different")(
                params, inputs, targets)
        dtype = norm_dtype(next(iter(grads.values())).dtype)
        layer_sq = {}
        for name, g in grads.items():
            layer = self.layers[name]
            layer_sq[layer] = layer_sq.get(layer, 0) + g.to(dtype).reshape(len(g), -1).pow(2).sum(1)
        norms, factors = self.factors(layer_sq)
        sums = {}
        for name, g in grads.items():
            c = factors if factors.dim() == 1 else factors[:, list(layer_sq).index(self.layers[name])]
            sums[name] = torch.tensordot(c.to(dtype), g.to(dtype), dims=1)
        with torch.no_grad():  # the batch's output, for accuracy: vmap gave only losses and gradients
            output = forward(self.model, inputs)
        return StepResult(losses.detach(), norms, factors, output), sums

    def _hooked(self, inputs, targets, loss_fn):
        records = {}
        second = self.mode == "ghost" and self.clipping == "flat" and not self.sharded
        budget = Budget(None if second else self.cache_elements)
        with capture(self.model, self.rules, records, fused=self.mode == "fused", method=self.norm_method,
                     tile=self.tile, budget=budget):
            output = forward(self.model, inputs)
        losses = loss_fn(output, targets)
        self._check_exact(inputs, records, losses)
        verify = [name for name in records if name not in self.verified and not self.sharded]
        grads = torch.autograd.grad(losses.sum(), [r.target for r in records.values()], retain_graph=second or bool(verify),
                                    allow_unused=True)
        layer_sq = {}
        for (name, record), g in zip(records.items(), grads):
            if record.grad is None:  # a hooked layer's G, or zeros for a layer the loss does not reach
                record.grad = g if g is not None and g.shape == record.output.shape else torch.zeros_like(record.output)
            if record.norm_sq is None:
                dtype = norm_dtype(record.grad.dtype)
                record.norm_sq, record.cache = record.rule.norms_sq(
                    record.module, as_dtype(record.inputs, dtype), record.grad.to(dtype), record.keys,
                    self.norm_method, self.tile, budget)
            layer_sq[name] = sum(record.norm_sq[key] for key in record.keys)
        for name in verify:
            self._verify(name, records[name])
        norms, factors = self.factors(layer_sq)
        if self.mode == "no_dp":  # (sharded) the plain sum: every factor 1
            factors = torch.ones_like(factors)
        if second:  # ghost: the clipped sum by backpropagating sum_i c_i loss_i
            sums = self._param_grads((losses * factors.to(losses.dtype)).sum())
        else:
            sums = {}
            for i, (name, record) in enumerate(records.items()):
                c = factors if factors.dim() == 1 else factors[:, i]
                for key, value in self._clipped(record, c).items():
                    sums[f"{name}.{key}" if name else key] = value
        records.clear()  # drop activations and graphs now, not at the next garbage collection
        return StepResult(losses.detach(), norms, factors, output.detach()), sums

    def _clipped(self, record: Record, c: torch.Tensor) -> dict:
        dtype = norm_dtype(record.grad.dtype)
        return record.rule.clipped(record.module, as_dtype(record.inputs, dtype), record.grad.to(dtype), c.to(dtype),
                                   record.keys, record.cache)

    def _check_exact(self, inputs, records: dict, losses: torch.Tensor) -> None:
        """Refuse a step the rules would get wrong (checks.py): every step, every parameter is
        used once by its own module; each new combination of input shapes has its batch
        dimension established."""
        for name, record in records.items():
            if record.output.shape[0] != len(losses):
                raise UserError(f"DP mode {self.mode!r}: module {name!r} produced an output for {record.output.shape[0]} "
                                f"sample(s) in a batch of {len(losses)}: its input is shared across samples (e.g. "
                                "position ids without a batch dimension) or not batch-first; give it one row per sample")
        check_uses(losses, records, self.params, self.layers, self.mode)
        layout = tuple((name, tuple(r.inputs.shape), r.inputs.dtype) for name, r in records.items())
        if layout not in self.layouts:
            check_layout(self.model, inputs, records, len(losses), losses.device, self.mode)
            self.layouts.add(layout)

    def _verify(self, name: str, record: Record) -> None:
        """Once per module: the rule's gradient sum equals autograd's (checks.check_rule). A fused
        Linear forms no weight gradient for autograd to compare with; its rule is the Linear's."""
        if self.mode == "fused" and isinstance(record.module, nn.Linear):
            self.verified.add(name)
            return
        params = [getattr(record.module, key) for key in record.keys]
        expected = torch.autograd.grad(record.output, params, record.grad, retain_graph=True, allow_unused=True)
        got = self._clipped(record, torch.ones(len(record.grad), dtype=record.grad.dtype, device=record.grad.device))
        check_rule(name, record, {k: e if e is not None else torch.zeros_like(p) for k, e, p
                                  in zip(record.keys, expected, params)}, got, self.mode)
        self.verified.add(name)

    def factors(self, layer_sq: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample norms and clip factors from per-layer squared norms."""
        squares = torch.stack(list(layer_sq.values()), 1)  # [B, L]
        norms = squares.sum(1).sqrt()
        if self.clipping == "flat":
            return norms, clip_factors(norms, self.C)
        return norms, clip_factors(squares.sqrt(), self.C / len(layer_sq) ** 0.5)

    # -- data parallel --------------------------------------------------------------------------

    def _all_reduce(self, sums: dict) -> None:
        import torch.distributed as dist

        flat = torch.cat([sums[n].reshape(-1) for n, _ in self.params])
        dist.all_reduce(flat)
        offset = 0
        for name, _ in self.params:
            size = sums[name].numel()
            sums[name] = flat[offset:offset + size].view_as(sums[name])
            offset += size

    def _global_batch(self, local: int) -> int:
        import torch.distributed as dist

        count = torch.tensor([local], dtype=torch.long)
        dist.all_reduce(count)
        return int(count.item())


def is_sharded(p: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch build without distributed support
        return False
    return isinstance(p, DTensor)


def shard_like(p: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` (identical on every rank) as a gradient for `p`: itself, or for an FSDP2
    parameter this rank's shard of it, placed as the parameter is (no communication)."""
    if not is_sharded(p):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)


def as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor  # embedding indices stay integers


def owning_layers(model: nn.Module) -> dict[str, str]:
    """Parameter name -> the name of the module that holds it directly."""
    return {f"{prefix}.{n}" if prefix else n: prefix for prefix, module in model.named_modules()
            for n, _ in module.named_parameters(recurse=False)}


class capture:
    """Within the block, every module with a rule and trainable parameters keeps its input and
    output on its first call and refuses a second (a fused Linear also computes its norms in
    backward)."""

    def __init__(self, model: nn.Module, rules: dict, records: dict, fused: bool, method: str, tile: int,
                 budget: Budget):
        self.model, self.rules, self.records, self.fused, self.method, self.tile = model, rules, records, fused, method, tile
        self.budget = budget
        self.handles, self.patched = [], []

    def __enter__(self):
        for name, module in self.model.named_modules():
            rule = self.rules.get(name)
            keys = tuple(n for n, p in module.named_parameters(recurse=False) if p.requires_grad)
            if rule is None or not keys:
                continue
            if self.fused and rule is LinearRule:
                module.forward = fused_forward(module, self._fused_record(name, rule, keys), self.method, self.tile,
                                               self.budget)
                self.patched.append(module)
            else:
                self.handles.append(module.register_forward_hook(self._hook(name, rule, keys)))
        return self

    def _claim(self, name: str, record: Record) -> None:
        if name in self.records:
            raise UserError(f"DP: module {name!r} ran twice in one forward pass; per-sample rules need each "
                            "layer called once (use mode per_sample)")
        self.records[name] = record

    def _hook(self, name: str, rule, keys: tuple):
        def keep(module, args, output):
            self._claim(name, Record(module, rule, keys, args[0].detach(), output, input_fn=args[0].grad_fn,
                                     target=output))
        return keep

    def _fused_record(self, name: str, rule, keys: tuple):
        def new(module, x):
            record = Record(module, rule, keys, x.detach(), input_fn=x.grad_fn)
            self._claim(name, record)
            return record
        return new

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        for module in self.patched:
            del module.forward  # back to the class's forward
        return False
