"""A character-level GPT on tiny-shakespeare."""

import functools

from pydantic import Field, model_validator

from ..data.shakespeare import load_shakespeare_text
from ..data.text import VOCAB, encode, windows
from ..models import GPT, GPTConfig
from ..options import Strict
from ..plugin import register_task
from .base import Task, TaskData, sample_text


class ShakespeareOptions(Strict):
    n_chars: int = Field(6000, ge=100, description="first N characters of tiny-shakespeare")
    block_size: int = Field(16, gt=0, description="window length")
    stride: int = Field(1, gt=0, description="distance between window starts")
    train_fraction: float = Field(0.8, gt=0, lt=1, description="the text is split before windowing")
    n_layer: int = Field(1, gt=0)
    n_head: int = Field(1, gt=0)
    n_embd: int = Field(8, gt=0)
    mlp_ratio: int = Field(1, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        cut = int(self.n_chars * self.train_fraction)
        if min(cut, self.n_chars - cut) <= self.block_size:
            raise ValueError("n_chars is too small for block_size on both sides of the split")
        return self


@register_task
class ShakespeareGPT(Task):
    name, Options = "shakespeare-gpt", ShakespeareOptions
    doc = "character-level GPT on tiny-shakespeare (952 parameters at the defaults)"
    language_model = True

    def load(self, opts, seed: int = 0) -> TaskData:
        return _shakespeare_data(opts.n_chars, opts.block_size, opts.stride, opts.train_fraction)

    def make_model(self, opts, data):
        return GPT(GPTConfig(len(VOCAB), opts.block_size, opts.n_layer, opts.n_head, opts.n_embd,
                             opts.mlp_ratio, opts.dropout))

    def sample(self, opts, data, model, seed):
        return sample_text(model, " ", 64, 0.8, seed)


@functools.lru_cache(maxsize=4)
def _shakespeare_data(n_chars: int, block_size: int, stride: int, train_fraction: float) -> TaskData:
    text = load_shakespeare_text()[:n_chars]
    tokens = encode(text)
    cut = int(len(tokens) * train_fraction)
    x_train, y_train = windows(tokens[:cut], block_size, stride)
    x_test, y_test = windows(tokens[cut:], block_size, stride)
    return TaskData(x_train, y_train, x_test, y_test,
                    source=f"tiny-shakespeare, first {len(text):,} characters, vocabulary {VOCAB!r}")
