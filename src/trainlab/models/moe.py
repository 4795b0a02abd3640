"""A decoder-only mixture-of-experts language model.

RMSNorm pre-norm blocks, rotary position embeddings, multi-head causal attention, and a
mixture-of-experts feed-forward: a router picks the top-k of E SiLU MLP experts per token
(optional Gaussian router noise while training), with the Switch-style load-balancing loss
E * sum_e f_e * p_e (f_e: fraction of routed tokens, p_e: mean router probability) kept in
`aux_loss` after each forward. Embeddings are tied to the output head; weights N(0, 0.02).
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class MoEConfig:
    vocab_size: int = 256
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    ff: int = 128
    experts: int = 4
    top_k: int = 2
    router_noise: float = 0.0
    dropout: float = 0.0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs of channels of x [B, H, T, D] by position-dependent angles."""
    t, d = x.shape[-2], x.shape[-1]
    freqs = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d)
    angles = torch.arange(t, device=x.device, dtype=torch.float64)[:, None] * freqs[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0 and (cfg.n_embd // cfg.n_head) % 2 == 0
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        q, k = rotary(q), rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Experts(nn.Module):
    """E SiLU MLPs and a top-k router; `aux_loss` holds the load-balancing loss of the last call."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.router = nn.Linear(cfg.n_embd, cfg.experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(cfg.experts, cfg.n_embd, cfg.ff))
        self.w_out = nn.Parameter(torch.empty(cfg.experts, cfg.ff, cfg.n_embd))
        self.aux_loss = torch.zeros(())

    def forward(self, x):
        B, T, C = x.shape
        tokens = x.reshape(-1, C)
        logits = self.router(tokens)
        if self.training and self.cfg.router_noise > 0:
            logits = logits + self.cfg.router_noise * torch.randn_like(logits)
        probs = logits.softmax(dim=-1)
        weights, chosen = probs.topk(self.cfg.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(tokens)
        for e in range(self.cfg.experts):  # each expert runs on the tokens routed to it
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            if len(rows):
                hidden = F.silu(tokens[rows] @ self.w_in[e]) @ self.w_out[e]
                out.index_add_(0, rows, hidden * weights[rows, slot].unsqueeze(1))
        routed = F.one_hot(chosen, self.cfg.experts).sum(dim=1).to(probs.dtype)  # [N, E]
        fraction = routed.mean(dim=0) / self.cfg.top_k
        self.aux_loss = self.cfg.experts * (fraction * probs.mean(dim=0)).sum()
        return out.view(B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.n_embd), Attention(cfg)
        self.norm2, self.moe = RMSNorm(cfg.n_embd), Experts(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.moe(self.norm2(x)))


class MoELM(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, mean=0.0, std=0.02)

    def forward(self, idx):
        x = self.drop(self.embed(idx))
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T  # tied embeddings

    @property
    def aux_loss(self) -> torch.Tensor:
        return sum(block.moe.aux_loss for block in self.blocks) / len(self.blocks)
