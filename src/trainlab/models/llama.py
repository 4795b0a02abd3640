"""A Llama-style causal language model: RMSNorm pre-norm blocks, rotary position embeddings,
grouped-query attention and SwiGLU feed-forward layers, randomly initialised (no download).

Presets go from `llama-tiny` (CPU, seconds) to `llama-3.2-1b`, the shape of Llama 3.2 1B
(vocabulary 128256, width 2048, 16 layers, 32 query heads sharing 8 key/value heads, feed-
forward 8192, rope theta 500000). The output head is its own Linear by default: tied
weights (Llama 3.2 ties them) make one parameter the sum of two layers' gradients, which
per-sample norm rules cannot split (`tie_embeddings: true` is there for the other modes).
"""

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .moe import rotary


@dataclass
class LlamaConfig:
    vocab_size: int = 256
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 172
    max_seq_len: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    tie_embeddings: bool = False


PRESETS = {
    "llama-tiny": LlamaConfig(),
    "llama-small": LlamaConfig(dim=256, n_layers=4, n_heads=8, n_kv_heads=2, ffn_dim=688, max_seq_len=512),
    "llama-3.2-1b": LlamaConfig(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
                                max_seq_len=2048),
}


def llama_config(preset: str = "llama-tiny", **changes) -> LlamaConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown Llama preset {preset!r} (allowed: {', '.join(PRESETS)})")
    return LlamaConfig(**{**asdict(PRESETS[preset]), **changes})


class GroupedQueryAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        if cfg.dim % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads:
            raise ValueError("dim must divide by n_heads, and n_heads by n_kv_heads")
        self.n_heads, self.n_kv_heads, self.head_dim, self.theta = cfg.n_heads, cfg.n_kv_heads, cfg.dim // cfg.n_heads, cfg.rope_theta
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotary(q, self.theta), rotary(k, self.theta)
        groups = self.n_heads // self.n_kv_heads  # each key/value head serves `groups` query heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attention = GroupedQueryAttention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.feed_forward = SwiGLU(cfg)

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_seq_len {self.cfg.max_seq_len}")
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))
