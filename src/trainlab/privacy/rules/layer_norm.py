"""nn.LayerNorm: grad_i w = sum_t G_i,t * xhat_i,t, grad_i b = sum_t G_i,t. Per-sample
gradients of an elementwise affine norm are [B, features]: always formed directly."""

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register_rule


class AffineNormRule:
    """y = normalised(x) * w (+ b), w and b of the normalised shape."""

    params = ("weight", "bias")

    @staticmethod
    def check(module) -> None:
        """Every configuration is supported."""

    @classmethod
    def per_sample(cls, module, x, g, keys) -> dict:
        dims = len(module.weight.shape)
        reduce = tuple(range(1, g.dim() - dims))
        out = {}
        if "weight" in keys:
            xg = g * cls.normalised(module, x)
            out["weight"] = xg.sum(reduce) if reduce else xg
        if "bias" in keys:
            out["bias"] = g.sum(reduce) if reduce else g
        return out

    @classmethod
    def norms_sq(cls, module, x, g, keys, method: str, tile: int, budget=None):
        grads = cls.per_sample(module, x, g, keys)
        return {k: v.reshape(v.shape[0], -1).pow(2).sum(1) for k, v in grads.items()}, grads

    @classmethod
    def clipped(cls, module, x, g, c, keys, cache: dict | None = None) -> dict:
        grads = cache or cls.per_sample(module, x, g, keys)
        return {k: torch.tensordot(c, v, dims=1) for k, v in grads.items()}


@register_rule(nn.LayerNorm)
class LayerNormRule(AffineNormRule):
    @staticmethod
    def normalised(module, x):
        return F.layer_norm(x, module.normalized_shape, eps=module.eps)
