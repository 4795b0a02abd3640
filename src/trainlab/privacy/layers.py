"""Per-sample gradient rules for the layers DP-SGD supports.

A forward hook keeps each supported module's input (the activation A) and a hook on its
output keeps the gradient of the summed per-sample losses with respect to that output (G).
Because sample i's loss depends only on sample i, row i of G is d loss_i / d output_i, and
every per-sample quantity of a layer follows from (A_i, G_i):

    Linear     grad_i W = G_i^T A_i (A, G flattened to [B, T, features])
    Conv       a Linear over unfolded patches (im2col)
    Embedding  grad_i W = rows of G_i added at the indices of sample i
    LayerNorm  grad_i w = sum_t G_i,t * xhat_i,t, grad_i b = sum_t G_i,t
    RMSNorm    grad_i w = sum_t G_i,t * x_i,t / rms(x_i,t)

Each rule gives per-sample squared norms (by one of three methods) and the clipped sum
sum_i c_i grad_i, without ever materialising a per-sample gradient unless asked to:

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
from torch import nn
from torch.nn import functional as F

from . import kernels

SUPPORTED = "Linear, Embedding, LayerNorm, RMSNorm, Conv1d, Conv2d (and Hugging Face's Conv1D, *RMSNorm)"


def norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Norms in at least float32: bf16 / fp16 compute, fp32 norms; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_rms_norm(module: nn.Module) -> bool:
    """torch's, trainlab's and Hugging Face's (LlamaRMSNorm, ...) RMS norms: y = x / rms(x) * w."""
    return (type(module).__name__.endswith("RMSNorm") and isinstance(getattr(module, "weight", None), nn.Parameter)
            and (hasattr(module, "eps") or hasattr(module, "variance_epsilon")))


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's Conv1D (GPT-2): a Linear layer whose weight is stored [in, out]."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def rule_of(module: nn.Module):
    if isinstance(module, nn.Linear):
        return LinearRule
    if isinstance(module, nn.Embedding):
        return EmbeddingRule
    if isinstance(module, nn.LayerNorm):
        return LayerNormRule
    if is_rms_norm(module):
        return RMSNormRule
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return ConvRule
    if is_hf_conv1d(module):
        return TransposedLinearRule
    return None


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


class LinearRule:
    @staticmethod
    def check(module) -> None:
        """Raise ValueError for a configuration of the module the rule cannot handle."""

    @staticmethod
    def flatten(module, a: torch.Tensor, g: torch.Tensor):
        return a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1])

    @classmethod
    def norms_sq(cls, module, a, g, method: str, tile: int, budget: Budget | None = None) -> tuple[dict, dict | None]:
        """Per-sample squared norms of each parameter's gradient, and what `clipped` may reuse."""
        a, g = cls.flatten(module, a, g)
        out, cache = {}, None
        method = choose(method, a.shape[0], a.shape[1], a.shape[2], g.shape[2], budget)
        if method in ("direct", "cached"):
            weight = torch.bmm(g.transpose(1, 2), a)  # [B, out, in]
            out["weight"] = torch.linalg.vector_norm(weight.reshape(len(weight), -1), dim=1).square()
            cache = {"weight": weight} if method == "cached" else None
        elif method == "gram":
            out["weight"] = gram_norm_sq(a, g)
        elif method == "kernel":
            out["weight"] = kernels.weight_norm_sq(a, g)
        else:
            out["weight"] = tiled_norm_sq(a, g, tile)
        if module.bias is not None:
            bias = g.sum(1, dtype=norm_dtype(g.dtype))  # g may be bf16 / fp16 for the kernel
            out["bias"] = bias.pow(2).sum(1)
            cache = {**(cache or {}), "bias": bias}
        return out, cache

    @classmethod
    def clipped(cls, module, a, g, c: torch.Tensor, cache: dict | None = None) -> dict:
        cache = cache or {}
        out = {}
        if "weight" in cache:
            out["weight"] = torch.tensordot(c, cache["weight"], dims=1)
        else:
            a2, g2 = cls.flatten(module, a, g)
            if a2.shape[-1] < g2.shape[-1]:  # scale the smaller of A and G by c
                a2 = a2 * c[:, None, None]
            else:
                g2 = g2 * c[:, None, None]
            out["weight"] = g2.reshape(-1, g2.shape[-1]).T @ a2.reshape(-1, a2.shape[-1])
        if module.bias is not None:
            out["bias"] = c @ cache["bias"]
        return out

    @classmethod
    def per_sample(cls, module, a, g) -> dict:
        a, g = cls.flatten(module, a, g)
        out = {"weight": torch.einsum("bto,bti->boi", g, a)}
        if module.bias is not None:
            out["bias"] = g.sum(1)
        return out


class TransposedLinearRule(LinearRule):
    """y = x W + b with W stored [in, out]: the Linear rule, weights transposed."""

    @classmethod
    def clipped(cls, module, a, g, c, cache: dict | None = None) -> dict:
        out = super().clipped(module, a, g, c, cache)
        out["weight"] = out["weight"].T
        return out

    @classmethod
    def per_sample(cls, module, a, g) -> dict:
        out = super().per_sample(module, a, g)
        out["weight"] = out["weight"].transpose(1, 2)
        return out


class ConvRule(LinearRule):
    """A convolution is a Linear layer applied to every patch of its input."""

    @staticmethod
    def check(module) -> None:
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str) and module.padding != "valid":
            raise ValueError("only groups=1, zero padding given as numbers (or 'valid') are supported")

    @staticmethod
    def flatten(module, a: torch.Tensor, g: torch.Tensor):
        two_d = isinstance(module, nn.Conv2d)
        pair = (lambda v: tuple(v)) if two_d else (lambda v: (1, v[0]))
        padding = (0, 0) if module.padding == "valid" else (tuple(module.padding) if two_d else (0, module.padding[0]))
        x = a if two_d else a.unsqueeze(2)
        patches = F.unfold(x, pair(module.kernel_size), dilation=pair(module.dilation), padding=padding,
                           stride=pair(module.stride))  # [B, C_in * k, L]
        return patches.transpose(1, 2), g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)

    @classmethod
    def clipped(cls, module, a, g, c, cache: dict | None = None) -> dict:
        out = super().clipped(module, a, g, c, cache)
        out["weight"] = out["weight"].reshape(module.weight.shape)
        return out

    @classmethod
    def per_sample(cls, module, a, g) -> dict:
        out = super().per_sample(module, a, g)
        out["weight"] = out["weight"].reshape(-1, *module.weight.shape)
        return out


class EmbeddingRule:
    """Rows of G land on the rows of W their tokens index; repeated tokens add up. The norm
    sums each (sample, token id) group first (a segment sum: memory [B*T, d], any T)."""

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
    def norms_sq(cls, module, idx, g, method: str, tile: int, budget: Budget | None = None) -> tuple[dict, None]:
        idx, g = cls.flatten(module, idx, g)
        B, T = idx.shape
        keys = (torch.arange(B, device=idx.device)[:, None] * module.num_embeddings + idx).reshape(-1)
        unique, inverse = torch.unique(keys, return_inverse=True)
        rows = g.new_zeros(len(unique), g.shape[-1]).index_add_(0, inverse, g.reshape(B * T, -1))
        return {"weight": g.new_zeros(B).index_add_(0, unique // module.num_embeddings, rows.pow(2).sum(1))}, None

    @classmethod
    def clipped(cls, module, idx, g, c, cache: None = None) -> dict:
        idx, g = cls.flatten(module, idx, g)
        weighted = (g * c[:, None, None]).reshape(-1, g.shape[-1])
        return {"weight": g.new_zeros(module.weight.shape).index_add_(0, idx.reshape(-1), weighted)}

    @classmethod
    def per_sample(cls, module, idx, g) -> dict:
        idx, g = cls.flatten(module, idx, g)
        out = g.new_zeros(idx.shape[0], *module.weight.shape)
        for i in range(idx.shape[0]):
            out[i].index_add_(0, idx[i], g[i])
        return {"weight": out}


class _NormRule:
    """Elementwise affine norms: per-sample gradients are [B, features]: always direct."""

    @staticmethod
    def check(module) -> None:
        """Every configuration is supported."""

    @classmethod
    def per_sample(cls, module, x, g) -> dict:
        dims = len(module.weight.shape)
        xhat = cls.normalised(module, x)
        reduce = tuple(range(1, g.dim() - dims))
        out = {"weight": (g * xhat).sum(reduce) if reduce else g * xhat}
        if getattr(module, "bias", None) is not None:
            out["bias"] = g.sum(reduce) if reduce else g
        return out

    @classmethod
    def norms_sq(cls, module, x, g, method: str, tile: int, budget: Budget | None = None) -> tuple[dict, dict]:
        grads = cls.per_sample(module, x, g)
        return {k: v.reshape(v.shape[0], -1).pow(2).sum(1) for k, v in grads.items()}, grads

    @classmethod
    def clipped(cls, module, x, g, c, cache: dict | None = None) -> dict:
        return {k: torch.tensordot(c, v, dims=1) for k, v in (cache or cls.per_sample(module, x, g)).items()}


class LayerNormRule(_NormRule):
    @staticmethod
    def normalised(module, x):
        return F.layer_norm(x, module.normalized_shape, eps=module.eps)


class RMSNormRule(_NormRule):
    @staticmethod
    def normalised(module, x):
        dims = tuple(range(-len(module.weight.shape), 0))
        if hasattr(module, "variance_epsilon"):  # Hugging Face normalises in float32, then casts back
            x32 = x.to(torch.float32)
            return (x32 * torch.rsqrt(x32.pow(2).mean(dims, keepdim=True) + module.variance_epsilon)).to(x.dtype)
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        return x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
