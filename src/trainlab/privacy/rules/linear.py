"""nn.Linear: grad_i W = G_i^T A_i, grad_i b = sum_t G_i,t (A, G flattened to [B, T, features])."""

import torch
from torch import nn

from .. import kernels
from ..norms import Budget, choose, gram_norm_sq, norm_dtype, tiled_norm_sq
from .registry import register_rule


@register_rule(nn.Linear)
class LinearRule:
    params = ("weight", "bias")

    @staticmethod
    def check(module) -> None:
        """Every configuration is supported."""

    @staticmethod
    def flatten(module, a: torch.Tensor, g: torch.Tensor):
        return a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1])

    @classmethod
    def norms_sq(cls, module, a, g, keys, method: str, tile: int, budget: Budget | None = None):
        """Per-sample squared norms of the gradients of `keys`, and what `clipped` may reuse."""
        a, g = cls.flatten(module, a, g)
        out, cache = {}, {}
        if "weight" in keys:
            method = choose(method, a.shape[0], a.shape[1], a.shape[2], g.shape[2], budget)
            if method in ("direct", "cached"):
                weight = torch.bmm(g.transpose(1, 2), a)  # [B, out, in]
                out["weight"] = torch.linalg.vector_norm(weight.reshape(len(weight), -1), dim=1).square()
                if method == "cached":
                    cache["weight"] = weight
            elif method == "gram":
                out["weight"] = gram_norm_sq(a, g)
            elif method == "kernel":
                out["weight"] = kernels.weight_norm_sq(a, g)
            else:
                out["weight"] = tiled_norm_sq(a, g, tile)
        if "bias" in keys:
            bias = g.sum(1, dtype=norm_dtype(g.dtype))  # g may be bf16 / fp16 for the kernel
            out["bias"] = bias.pow(2).sum(1)
            cache["bias"] = bias
        return out, cache

    @classmethod
    def clipped(cls, module, a, g, c: torch.Tensor, keys, cache: dict | None = None) -> dict:
        cache = cache or {}
        out = {}
        if "weight" in keys and "weight" in cache:
            out["weight"] = torch.tensordot(c, cache["weight"], dims=1)
        elif "weight" in keys:
            a2, g2 = cls.flatten(module, a, g)
            if a2.shape[-1] < g2.shape[-1]:  # scale the smaller of A and G by c
                a2 = a2 * c[:, None, None]
            else:
                g2 = g2 * c[:, None, None]
            out["weight"] = g2.reshape(-1, g2.shape[-1]).T @ a2.reshape(-1, a2.shape[-1])
        if "bias" in keys:
            bias = cache["bias"] if "bias" in cache else cls.flatten(module, a, g)[1].sum(1)
            out["bias"] = c @ bias
        return out
