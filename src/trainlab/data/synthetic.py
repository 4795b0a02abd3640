"""Synthetic data: sparse signals in noise, for the two-layer denoiser."""

import torch


def sparse_signals(n: int, dim: int, sparsity: int, noise_variance: float, generator: torch.Generator):
    """(noisy inputs, clean signals): each clean signal has `sparsity` ones at distinct random
    coordinates; the input adds N(0, noise_variance) to every coordinate."""
    support = torch.rand(n, dim, generator=generator).topk(sparsity, dim=1).indices
    clean = torch.zeros(n, dim).scatter_(1, support, 1.0)
    noisy = clean + noise_variance**0.5 * torch.randn(n, dim, generator=generator)
    return noisy, clean
