"""What a task is: data + a model factory + a loss + metrics.

Each task has an `Options` model (its spec fields, validated with their defaults), loads its
data once per process (cached), and builds a fresh model on demand. The trainer only ever
calls `load`, `make_model`, `loss`, `count_correct` (and `penalty`, `sample`).
"""

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..data.text import decode, encode
from ..models.sampling import generate
from ..options import NoOptions, Strict


IGNORE = -100  # a target position that counts for neither loss nor accuracy (padding)


@dataclass
class TaskData:
    """A task's data. Training samples come from one of: tensors held in memory (`x_train`,
    `y_train`: the fast path), a map-style `torch.utils.data.Dataset` of (input, target) items
    loaded batch by batch with its transforms (`train_set`), or a sampler of fresh samples
    (`sample`). The held-out split is tensors (a held-out Dataset is loaded once:
    `materialise`). Inputs may be a tensor or a dict of tensors (model(**inputs))."""

    x_train: torch.Tensor | dict | None  # None when the samples come from train_set or sample
    y_train: torch.Tensor | None
    x_test: torch.Tensor | dict
    y_test: torch.Tensor
    source: str  # where the data came from, shown in every report
    extras: dict = field(default_factory=dict)
    sample: object = None  # generated tasks: sample(batch_size, generator) -> (inputs, targets)
    samples_per_epoch: int = 0
    notes: list = field(default_factory=list)  # substitutions a report must state up front
    train_set: object = None  # a map-style Dataset of (input, target) items

    @property
    def n_train(self) -> int:
        if self.sample is not None:
            return self.samples_per_epoch
        return len(self.train_set) if self.train_set is not None else len(self.y_train)


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
        """Cross-entropy over every target position that is not IGNORE (-100)."""
        return F.cross_entropy(output.flatten(0, -2), target.flatten(), reduction=reduction, ignore_index=IGNORE)

    def is_language_model(self, opts) -> bool:
        """Held-out perplexity is reported for language models."""
        return self.language_model

    def is_cross_entropy(self, opts) -> bool:
        """Whether the loss is the mean cross-entropy of the outputs (DP-SGD and batched runs need it)."""
        return self.cross_entropy

    def count_correct(self, output: torch.Tensor, target: torch.Tensor, opts=None) -> tuple[torch.Tensor, int]:
        valid = target != IGNORE
        return ((output.argmax(-1) == target) & valid).sum(), int(valid.sum())

    def loss_items(self, target: torch.Tensor, opts=None) -> int:
        """How many terms the mean loss averages over (samples, or tokens for a language model)."""
        return int((target != IGNORE).sum()) if not target.is_floating_point() else len(target)


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
