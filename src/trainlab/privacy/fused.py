"""The fused mode: a Linear layer whose backward also yields its per-sample gradient norms.

During a DP forward each nn.Linear runs through `FusedLinear`. Its backward receives the
output gradient G anyway; it computes the per-sample squared norms of the weight (and bias)
gradient from G and the saved input right there, keeps G for the clipped gradient, and
returns the input gradient only: no weight gradient is formed in this pass. The engine asks
autograd for the gradient of a zero "anchor" that every fused layer takes as an input, so
each layer's backward runs even when nothing below it needs a gradient.

On CUDA with Triton installed (and norm_method "auto") the weight norm is the Triton kernel
of `kernels.py`, which never writes a per-sample gradient; elsewhere it is the Linear rule's
PyTorch code (direct, Gram or tiled, chosen per layer).
"""

import torch
from torch.nn import functional as F

from . import kernels
from .norms import norm_dtype
from .rules.linear import LinearRule


class FusedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, anchor, record, method, tile, budget):
        ctx.save_for_backward(x, weight)
        ctx.record, ctx.method, ctx.tile, ctx.budget = record, method, tile, budget
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        record, ctx.record = ctx.record, None  # the record holds our output: break the cycle
        record.grad = grad_out
        if ctx.method == "auto" and kernels.available(x) and x.dtype == grad_out.dtype:
            a, g, method = x, grad_out, "kernel"  # the kernel reads bf16 / fp16 as they are
        else:
            dtype = norm_dtype(grad_out.dtype)
            a, g, method = x.to(dtype), grad_out.to(dtype), ctx.method
        record.norm_sq, record.cache = LinearRule.norms_sq(record.module, a, g, record.keys, method, ctx.tile,
                                                           ctx.budget)
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        anchor = torch.zeros((), dtype=grad_out.dtype, device=grad_out.device)
        return grad_x, None, None, anchor, None, None, None, None


def fused_forward(module, new_record, method: str, tile: int, budget):
    """A forward for `module` that runs FusedLinear; `new_record(module, x)` registers each call."""
    def forward(x):
        record = new_record(module, x)
        record.target = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
        record.output = FusedLinear.apply(x, module.weight, module.bias, record.target, record, method, tile,
                                           budget)
        return record.output
    return forward
