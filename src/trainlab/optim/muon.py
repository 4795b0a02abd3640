"""Muon: orthogonalised momentum for hidden 2-D weight matrices.

`torch.optim.Muon` is used when the installed torch has it; `ReferenceMuon` is a line-by-line
equivalent of its single-tensor path for older torch (a test checks they agree exactly).
"""

import math

import torch
from torch import nn


def zeropower_newton_schulz(grad: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """Quintic Newton-Schulz iteration towards U V^T of grad = U S V^T, in bfloat16."""
    a, b, c = coefficients
    x = grad.bfloat16()
    transposed = grad.size(0) > grad.size(1)
    if transposed:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if transposed else x


def adjusted_lr(lr: float, rule: str | None, shape) -> float:
    rows, cols = shape[:2]
    if rule in (None, "original"):
        return lr * math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class ReferenceMuon(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon only supports 2-D parameters, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                update = zeropower_newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-adjusted_lr(group["lr"], group["adjust_lr_fn"], p.shape))
        return loss


def muon_class():
    return getattr(torch.optim, "Muon", ReferenceMuon)


def split_for_muon(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden 2-D weights for Muon, everything else for AdamW).

    Muon takes the weight of every nn.Linear except the last one registered (the head);
    embeddings, the head, norms, biases and convolution filters go to AdamW.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hidden = {id(m.weight) for m in linears[:-1]}
    muon, other = [], []
    for p in model.parameters():
        if p.requires_grad:
            (muon if id(p) in hidden else other).append(p)
    return muon, other
