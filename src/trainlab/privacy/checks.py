"""Why the hooked modes (ghost, bk, flash, fused) are exact, checked rather than assumed.

A per-sample rule turns a module's input A and output gradient G into per-sample gradients.
That is exact only when

1. every module with trainable parameters has a rule that covers all of them, and no
   parameter belongs to two modules (`check_supported`, once);
2. no module mixes the samples of a batch (BatchNorm in training mode: `check_no_mixing`,
   every step);
3. every trainable parameter reaches the loss through exactly one use, its own module's
   single call: not tied, reused or used functionally (`F.linear(x, m.weight)`) elsewhere
   (`check_uses`, every step, on the autograd graph);
4. each hooked input has one row per sample on dimension 0, and row i depends on sample i
   alone (`check_layout`: the module inputs of the batch less its last sample must be the
   first rows of the batch's; run whenever a new combination of input shapes appears);
5. the rule computes what the module does (`check_rule`: the rule's gradient sum equals
   autograd's for the module, once per module).

A step that fails any of these is refused with a message naming the module or parameter;
mode per_sample (torch.func) has none of these limits.
"""

import contextlib

import torch
from torch import nn

from ..errors import UserError
from ..graph import walk
from ..models.outputs import forward
from .rules import rule_of, supported

MIXERS = (nn.modules.batchnorm._BatchNorm,)  # batch statistics couple the samples of a batch


def check_supported(model: nn.Module, mode: str) -> None:
    seen = {}
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        rule = rule_of(module)
        where = f"module {name or '(root)'!r} ({type(module).__name__})"
        if rule is None:
            raise UserError(f"DP mode {mode!r}: {where} has parameters but no per-sample rule "
                            f"(supported: {supported()}; a subclass with its own forward has none; mode per_sample "
                            "handles any module)")
        uncovered = [n for n, _ in own if n not in rule.params]
        if uncovered:
            raise UserError(f"DP mode {mode!r}: {where}: parameter(s) {', '.join(uncovered)} are not covered by its "
                            f"rule (which knows {', '.join(rule.params)}); use mode per_sample")
        try:
            rule.check(module)
        except ValueError as err:
            raise UserError(f"DP mode {mode!r}: {where}: {err}") from None
        for key, p in own:
            full = f"{name}.{key}" if name else key
            if id(p) in seen:
                raise UserError(f"DP mode {mode!r}: parameter {seen[id(p)]!r} is shared by modules "
                                f"{seen[id(p)].rsplit('.', 1)[0]!r} and {name!r} (tied weights); untie them or use mode "
                                "per_sample")
            seen[id(p)] = full


def check_no_mixing(model: nn.Module, mode: str) -> None:
    for name, module in model.named_modules():
        if isinstance(module, MIXERS) and module.training:
            raise UserError(f"DP mode {mode!r}: module {name!r} ({type(module).__name__}) normalises with batch "
                            "statistics in training mode, which mixes the samples of a batch, so no per-sample "
                            "gradient exists; use GroupNorm or LayerNorm, or freeze it in eval mode")


def module_leaves(output_fn, input_fn) -> set[int]:
    """Ids of the leaves a module's own computation reads: the graph from its output down to,
    and not into, the graph of its input."""
    leaves, reached, stack = set(), set(), [output_fn]
    while stack:
        node = stack.pop()
        if node is None or node is input_fn or id(node) in reached:
            continue
        reached.add(id(node))
        for child, _ in node.next_functions:
            if child is not None and getattr(child, "variable", None) is not None:
                leaves.add(id(child.variable))
            elif child is not None:
                stack.append(child)
    return leaves


def check_uses(losses: torch.Tensor, records: dict, params: list, owners: dict, mode: str) -> None:
    """Every trainable parameter reaches the loss once, through its own module's call."""
    graph = walk(losses.grad_fn)
    uses, reached = graph.uses, graph.reached
    through_module = {}
    for name, record in records.items():
        output_fn = record.output.grad_fn
        if output_fn is not None and id(output_fn) in reached:
            for leaf in module_leaves(output_fn, record.input_fn):
                through_module[leaf] = name
    for name, p in params:
        count, module = uses.get(id(p), 0), owners[name]
        if count == 0:
            continue
        why = None
        if count > 1:
            why = (f"is used {count} times in the forward pass (tied weights, a reused module, or a use besides "
                   "its module's own call)")
        elif module not in records:
            why = f"reaches the loss but its module {module!r} was not called (a functional use, e.g. F.linear(x, m.weight))"
        elif through_module.get(id(p)) != module:
            why = f"reaches the loss through a use outside its module {module!r}"
        if why:
            raise UserError(f"DP mode {mode!r}: parameter {name!r} {why}; per-sample rules see only one call of each "
                            "module (mode per_sample handles any use)")


def rows_match(part: torch.Tensor, full: torch.Tensor) -> bool:
    if not part.is_floating_point():
        return torch.equal(part, full)
    tol = 1e-9 if part.dtype == torch.float64 else 1e-4 if part.dtype == torch.float32 else 1e-2
    scale = max(1.0, float(full.abs().max())) if full.numel() else 1.0
    return bool((part - full).abs().max() <= tol * scale) if part.numel() else True


def first_rows(inputs, n: int):
    if isinstance(inputs, dict):
        return {k: first_rows(v, n) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(first_rows(v, n) for v in inputs)
    return inputs[:n] if isinstance(inputs, torch.Tensor) else inputs


@contextlib.contextmanager
def evaluation(model: nn.Module, device: torch.device):
    """No gradients, every module in eval mode (no dropout), random state untouched; restored after."""
    modes = [(m, m.training) for m in model.modules()]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            model.eval()
            yield
    finally:
        for module, training in modes:
            module.training = training


def module_inputs(model: nn.Module, inputs, names: list[str]) -> dict:
    """The first input each named module receives in a forward pass of `inputs`."""
    seen, handles = {}, []
    modules = dict(model.named_modules())

    def keeper(name):
        def keep(module, args, output):
            seen.setdefault(name, args[0])  # returns None: the output stays the module's
        return keep

    for name in names:
        handles.append(modules[name].register_forward_hook(keeper(name)))
    try:
        forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def check_layout(model: nn.Module, inputs, records: dict, batch: int, device: torch.device, mode: str) -> None:
    """Each hooked input has the batch on dimension 0, row i depending on sample i alone:
    the inputs the modules receive for the batch less its last sample must be the first
    rows of those for the whole batch (in eval mode, so that dropout does not differ)."""
    if batch < 2:
        return
    names = list(records)
    with evaluation(model, device):
        full = module_inputs(model, inputs, names)
        part = module_inputs(model, first_rows(inputs, batch - 1), names)
    for name, record in records.items():
        a, b = full.get(name), part.get(name)
        shape = tuple(record.inputs.shape)
        if (a is None or b is None or tuple(a.shape) != shape or a.shape[0] != batch
                or tuple(b.shape) != (batch - 1, *shape[1:]) or not rows_match(b, a[:batch - 1])):
            raise UserError(
                f"DP mode {mode!r}: cannot establish the batch dimension of module {name!r} (input shape {shape}, "
                f"batch of {batch}): its input must have one row per sample on dimension 0, each depending on that "
                "sample alone (e.g. not sequence-first, not mixed across samples); use mode per_sample or "
                "move the batch to the front")


def check_rule(name: str, record, expected: dict, got: dict, mode: str) -> None:
    """The rule's sum of per-sample gradients (every factor 1) against autograd's for the module."""
    for key, want in expected.items():
        have = got[key].to(want.dtype)
        tol = 1e-8 if want.dtype == torch.float64 else 1e-3 if want.dtype == torch.float32 else 5e-2
        error = float((have - want).norm()) / max(float(want.norm()), 1e-30)
        if float(want.norm()) == 0 and float(have.norm()) == 0:
            continue
        if error > tol:
            raise UserError(f"DP mode {mode!r}: the per-sample rule for module {name!r} ({type(record.module).__name__}) "
                            f"does not reproduce its gradient of {key!r} (relative difference {error:.2g}): the layer "
                            "computes something the rule does not describe; use mode per_sample")
