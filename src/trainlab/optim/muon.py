"""Muon: orthogonalised momentum for the hidden weight matrices of a network.

`Muon` follows `torch.optim.Muon` line by line on 2-D parameters (a test checks they agree
exactly) and extends it to the layouts torch's refuses: a convolution filter
[out, in, k...] is updated as the matrix [out, in*k...], and a stacked tensor [..., m, n]
(mixture-of-experts weights) is orthogonalised one [m, n] matrix at a time. Which
parameters are hidden matrices is decided by `split_for_muon` from their roles
(roles.py), not from their class or their order in the model.
"""

import fnmatch
import math

import torch

from ..errors import SpecError
from .roles import MUON_ROLES, Role

LAYOUTS = ("matrix", "conv", "stacked")


def zeropower_newton_schulz(grad: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """Quintic Newton-Schulz iteration towards U V^T of each matrix grad = U S V^T (the last
    two dimensions), in bfloat16."""
    a, b, c = coefficients
    x = grad.bfloat16()
    transposed = grad.size(-2) > grad.size(-1)
    if transposed:
        x = x.mT
    if x.dim() == 2:  # torch.optim.Muon's own sequence of kernels, so 2-D updates agree bit for bit
        x = x / x.norm().clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    else:
        x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if transposed else x


def as_matrices(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The matrix (2-D) or batch of matrices (3-D) Muon orthogonalises for a parameter."""
    if layout == "conv":
        return t.reshape(t.shape[0], -1)
    if layout == "stacked":
        return t.reshape(-1, *t.shape[-2:])
    return t


def adjusted_lr(lr: float, rule: str | None, shape) -> float:
    rows, cols = shape[-2:]
    if rule in (None, "original"):
        return lr * math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Muon(torch.optim.Optimizer):
    """Each param group has a `layout`: matrix (2-D), conv or stacked (see `as_matrices`)."""

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None, layout="matrix"):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                        layout=layout)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["layout"] not in LAYOUTS:
                raise ValueError(f"layout must be one of {LAYOUTS}")
            for p in group["params"]:
                if p.ndim < (2 if group["layout"] != "stacked" else 3) or (group["layout"] == "matrix" and p.ndim != 2):
                    raise ValueError(f"Muon layout {group['layout']!r} does not fit a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            mu, layout = group["momentum"], group["layout"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                matrices = as_matrices(update, layout)
                update = zeropower_newton_schulz(matrices, group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.reshape(p.shape),
                       alpha=-adjusted_lr(group["lr"], group["adjust_lr_fn"], matrices.shape))
        return loss


def split_for_muon(roles: dict[str, Role], muon_params: list[str] | None = None,
                   adamw_params: list[str] | None = None) -> tuple[dict[str, str], list[str]]:
    """({parameter name: Muon layout}, [parameter names for AdamW]).

    By role: hidden matrices, convolution filters and stacked matrices go to Muon; embeddings,
    the head, vectors and the rest to AdamW. `muon_params` / `adamw_params` are name patterns
    (fnmatch, e.g. `blocks.*.mlp.*`) that move matching parameters to Muon / AdamW; each must
    match at least one trainable parameter."""
    muon = {name: r.role for name, r in roles.items() if r.role in MUON_ROLES}
    for field, patterns in (("muon_params", muon_params), ("adamw_params", adamw_params)):
        for pattern in patterns or []:
            matched = [name for name in roles if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise SpecError(field, f"pattern {pattern!r} matches no trainable parameter (they are: "
                                       f"{', '.join(list(roles)[:12])}{', ...' if len(roles) > 12 else ''})")
            for name in matched:
                if field == "adamw_params":
                    muon.pop(name, None)
                elif len(roles[name].shape) < 2:
                    raise SpecError(field, f"pattern {pattern!r} matches {name!r} of shape {roles[name].shape}: "
                                           "Muon needs a matrix")
                else:
                    muon[name] = muon.get(name) or ("matrix" if len(roles[name].shape) == 2 else "stacked")
    return muon, [name for name in roles if name not in muon]
