"""Shared arithmetic of the per-sample rules: norm precision, the Gram form of a Linear
layer's per-sample norm, and the budget for keeping per-sample gradients.

    cached  instantiate grad_i (Linear: [B, out, in]) once, keep it for the clipped sum: the
            cost of an ordinary weight gradient, memory B x parameters (within a budget)
    direct  instantiate grad_i for the norm only, form the clipped sum from A and G again
    gram    ||G_i^T A_i||^2 = <A_i A_i^T, G_i G_i^T>: [B, T, T]; cheap when T is short
    tiled   the Gram form in T-tiles of `tile` positions: memory [B, tile, tile], any T
    kernel  the Triton kernel of `kernels.py` (the fused mode on a GPU): no per-sample
            gradient or Gram matrix in memory; A and G may stay bf16 / fp16
    auto    the cheaper of direct and gram (by multiply-adds and memory traffic)
"""

import torch

METHODS = ("auto", "cached", "direct", "gram", "tiled", "kernel")


def norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Norms in at least float32: bf16 / fp16 compute, fp32 norms; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_norm_sq(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum_{t,s} (a_t . a_s)(g_t . g_s) for each sample: [B, T, i], [B, T, o] -> [B]."""
    return ((a @ a.transpose(1, 2)) * (g @ g.transpose(1, 2))).sum((1, 2))


def tiled_norm_sq(a: torch.Tensor, g: torch.Tensor, tile: int) -> torch.Tensor:
    """The Gram form, one pair of T-tiles at a time; the matrix is symmetric, so each pair
    below the diagonal counts twice."""
    total = a.new_zeros(a.shape[0])
    T = a.shape[1]
    for start in range(0, T, tile):
        a_row, g_row = a[:, start:start + tile], g[:, start:start + tile]
        for other in range(0, start + 1, tile):
            a_col, g_col = a[:, other:other + tile], g[:, other:other + tile]
            block = ((a_row @ a_col.transpose(1, 2)) * (g_row @ g_col.transpose(1, 2))).sum((1, 2))
            total += block if other == start else 2 * block
    return total


class Budget:
    """How many per-sample gradient elements the engine may keep between the norms and the
    clipped sum (None: keep none, as in ghost mode, which backpropagates again instead)."""

    def __init__(self, elements: int | None):
        self.left = elements

    def take(self, n: int) -> bool:
        if self.left is None or n > self.left:
            return False
        self.left -= n
        return True


def choose(method: str, B: int, T: int, n_in: int, n_out: int, budget: Budget | None) -> str:
    """'auto': the cheaper of the Gram form and direct instantiation.
    'cached' keeps per-sample gradients while the budget lasts (then falls back to auto): it
    saves the clipped-sum matmul, but a batch of small matmuls and B x parameters of memory
    traffic cost more than that on a CPU (benchmarks/bench_dp.py)."""
    if method == "cached" and budget is not None and budget.take(B * n_in * n_out):
        return "cached"
    if method not in ("auto", "cached"):
        return method
    # multiply-adds per sample, plus the per-sample gradient that direct writes and reads back
    # (about 32 multiply-adds' worth per element, measured on CPU: at equal multiply-adds the
    # Gram form takes half the time of direct for a 256 x 1024 layer at T 128)
    direct = n_in * n_out * (T + 32)
    gram = T * T * (n_in + n_out)
    return "gram" if gram <= direct else "direct"
