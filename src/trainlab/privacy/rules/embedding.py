"""nn.Embedding: rows of G land on the rows of W their tokens index; repeated tokens add up.
The norm sums each (sample, token id) group first (a segment sum: memory [B*T, d], any T)."""

import torch
from torch import nn

from .registry import register_rule


@register_rule(nn.Embedding)
class EmbeddingRule:
    params = ("weight",)

    @staticmethod
    def check(module) -> None:
        if module.max_norm is not None or module.sparse:
            raise ValueError("max_norm and sparse embeddings are not supported")

    @staticmethod
    def flatten(module, idx: torch.Tensor, g: torch.Tensor):
        idx = idx.reshape(idx.shape[0], -1)  # copies a non-contiguous (e.g. expanded) index tensor
        g = g.reshape(g.shape[0], -1, g.shape[-1])
        if module.padding_idx is not None:
            g = g * (idx != module.padding_idx).unsqueeze(-1).to(g.dtype)
        return idx, g

    @classmethod
    def norms_sq(cls, module, idx, g, keys, method: str, tile: int, budget=None):
        idx, g = cls.flatten(module, idx, g)
        B, T = idx.shape
        keys_ = (torch.arange(B, device=idx.device)[:, None] * module.num_embeddings + idx).reshape(-1)
        unique, inverse = torch.unique(keys_, return_inverse=True)
        rows = g.new_zeros(len(unique), g.shape[-1]).index_add_(0, inverse, g.reshape(B * T, -1))
        return {"weight": g.new_zeros(B).index_add_(0, unique // module.num_embeddings, rows.pow(2).sum(1))}, None

    @classmethod
    def clipped(cls, module, idx, g, c, keys, cache=None) -> dict:
        idx, g = cls.flatten(module, idx, g)
        weighted = (g * c[:, None, None]).reshape(-1, g.shape[-1])
        return {"weight": g.new_zeros(module.weight.shape).index_add_(0, idx.reshape(-1), weighted)}
