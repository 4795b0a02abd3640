"""Autoregressive sampling for any causal language model that maps token ids to logits."""

import torch
from torch.nn import functional as F


@torch.no_grad()
def generate(model, idx: torch.Tensor, new_tokens: int, block_size: int, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Append `new_tokens` sampled tokens to idx [B, T]; temperature 0 means greedy."""
    for _ in range(new_tokens):
        logits = model(idx[:, -block_size:])[:, -1, :]
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = F.softmax(logits.double() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        idx = torch.cat([idx, nxt], dim=1)
    return idx
