"""A mixture-of-experts language model on tiny-shakespeare bytes or characters."""

import functools
from typing import Literal

import torch
from pydantic import Field, model_validator

from ..data.shakespeare import load_shakespeare_text
from ..data.text import text_tokenizer, windows
from ..models import MoEConfig, MoELM
from ..options import Strict
from ..plugin import register_task
from .base import Task, TaskData, sample_text


MOE_PRESETS = {
    "moe-tiny": {"n_embd": 64, "n_layer": 2, "n_head": 4, "ff": 128, "experts": 4, "top_k": 2},
    "moe-384": {"n_embd": 384, "n_layer": 6, "n_head": 8, "ff": 1536, "experts": 8, "top_k": 2},
}


class MoEOptions(Strict):
    preset: Literal["moe-tiny", "moe-384", "custom"] = Field("moe-tiny", description="size; custom uses the fields below")
    n_embd: int | None = Field(None, gt=0)
    n_layer: int | None = Field(None, gt=0)
    n_head: int | None = Field(None, gt=0)
    ff: int | None = Field(None, gt=0)
    experts: int | None = Field(None, gt=0)
    top_k: int | None = Field(None, gt=0)
    router_noise: float = Field(0.0, ge=0, description="std of Gaussian noise on router logits while training")
    aux_loss_weight: float = Field(0.01, ge=0, description="weight of the load-balancing loss")
    dropout: float = Field(0.1, ge=0, lt=1)
    tokenizer: Literal["byte", "char"] = "byte"
    n_chars: int = Field(200_000, ge=1000, description="first N characters of the corpus")
    block_size: int = Field(64, gt=1)
    val_fraction: float = Field(0.1, gt=0, lt=1, description="windows held out, chosen with split_seed")
    split_seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _size(self):
        base = MOE_PRESETS.get(self.preset, {})
        for key in ("n_embd", "n_layer", "n_head", "ff", "experts", "top_k"):
            if getattr(self, key) is None:
                if not base:
                    raise ValueError(f"preset custom needs {key}")
                setattr(self, key, base[key])
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError("n_embd / n_head must be an even integer (rotary embeddings rotate channel pairs)")
        if self.top_k > self.experts:
            raise ValueError("top_k cannot exceed experts")
        return self


@register_task
class MoELanguageModel(Task):
    name, Options = "moe-lm", MoEOptions
    doc = "mixture-of-experts decoder (RMSNorm, rotary, top-k experts) on tiny-shakespeare bytes or characters"
    language_model = True

    def load(self, opts, seed: int = 0) -> TaskData:
        return _corpus_windows(opts.tokenizer, opts.n_chars, opts.block_size, opts.val_fraction, opts.split_seed)

    def make_model(self, opts, data):
        return MoELM(MoEConfig(data.extras["vocab_size"], opts.block_size, opts.n_layer, opts.n_head, opts.n_embd,
                               opts.ff, opts.experts, opts.top_k, opts.router_noise, opts.dropout))

    def penalty(self, opts, model):
        return opts.aux_loss_weight * model.aux_loss if opts.aux_loss_weight else None

    def sample(self, opts, data, model, seed):
        return sample_text(model, " ", 64, 0.8, seed, data.extras["encode"], data.extras["decode"], opts.block_size)


@functools.lru_cache(maxsize=4)
def _corpus_windows(tokenizer: str, n_chars: int, block_size: int, val_fraction: float, split_seed: int) -> TaskData:
    text = load_shakespeare_text()[:n_chars]
    vocab, encode, decode = text_tokenizer(tokenizer, text)
    x, y = windows(torch.tensor(encode(text), dtype=torch.long), block_size, block_size)
    count = len(x)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(split_seed))
    cut = max(1, int(round(count * val_fraction)))
    test, train = order[:cut].sort().values, order[cut:].sort().values
    return TaskData(x[train], y[train], x[test], y[test], extras={"vocab_size": vocab, "encode": encode, "decode": decode},
                    source=f"tiny-shakespeare, first {len(text):,} characters, {tokenizer} tokens, windows of "
                           f"{block_size}, {cut} of {count} held out (seed {split_seed})")
