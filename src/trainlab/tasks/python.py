"""Your own model and data, named by import path, without writing a Task class.

    task:
      name: python
      model: my_models:resnet_ish          # a callable returning an nn.Module
      model_args: {width: 32}
      data: my_data:load                   # a callable returning (train, test)
      data_args: {n: 2000}
      loss: my_losses:smooth_ce            # optional: cross-entropy over the last dimension by default

`data` returns `(train, test)`, each either a tuple `(inputs, targets)` of tensors (held in
memory: the fast path) or a map-style `torch.utils.data.Dataset` of `(input, target)` items
(loaded batch by batch, its transforms and augmentation applied, seeded per sample); a
held-out Dataset is loaded once. Inputs may be tensors or dicts of tensors (passed as
keyword arguments). A `model` that is a Hugging Face model class (it has `config_class`) is
built from `config_class(**model_args)`; model outputs with `.logits` need no wrapper.
`loss(output, target)` returns the mean loss of a batch; `accuracy(output, target)` returns
`(correct, count)`; by default accuracy is the argmax's for integer targets (positions whose
target is -100 ignored) and not reported for real-valued targets.
"""

import torch
from pydantic import Field
from torch import nn

from ..errors import SpecError
from ..options import Strict
from ..plugin import import_object, register_task
from .base import Task, TaskData
from .loading import as_task_data


class PythonOptions(Strict):
    model: str = Field(description="import path of a callable returning an nn.Module (package.module:name)")
    model_args: dict = Field(default_factory=dict, description="keyword arguments of `model`")
    data: str = Field(description="import path of a callable returning (train, test)")
    data_args: dict = Field(default_factory=dict, description="keyword arguments of `data`")
    loss: str | None = Field(None, description="import path of loss(output, target) -> mean loss (default: cross-entropy)")
    accuracy: str | None = Field(None, description="import path of accuracy(output, target) -> (correct, count)")
    language_model: bool = Field(False, description="report held-out perplexity (exp of the loss)")


def build_model(path: str, args: dict, where: str) -> nn.Module:
    """`path` names a callable (a function, an nn.Module class, or a Hugging Face model class,
    which is built from its config class)."""
    factory = import_object(path, where)
    config_class = getattr(factory, "config_class", None)
    try:
        model = factory(config_class(**args)) if isinstance(factory, type) and config_class is not None else factory(**args)
    except TypeError as exc:
        raise SpecError(f"{where}_args", f"{path} does not take these arguments: {exc}") from None
    if not isinstance(model, nn.Module):
        raise SpecError(where, f"{path} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@register_task
class PythonTask(Task):
    name, Options = "python", PythonOptions
    doc = "your own model, data and loss, named by import path"

    def load(self, opts, seed: int = 0) -> TaskData:
        loaded = import_object(opts.data, "task.data")(**opts.data_args)
        if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
            raise SpecError("task.data", f"{opts.data} must return (train, test), got a {type(loaded).__name__}")
        return as_task_data(loaded[0], loaded[1], source=f"{opts.data}({', '.join(f'{k}={v!r}' for k, v in opts.data_args.items())})",
                            where="task.data")

    def make_model(self, opts, data: TaskData) -> nn.Module:
        return build_model(opts.model, opts.model_args, "task.model")

    def loss(self, output, target, reduction: str = "mean", opts=None):
        if opts is None or opts.loss is None:
            return super().loss(output, target, reduction)
        mean = import_object(opts.loss, "task.loss")(output, target)
        return mean if reduction == "mean" else mean * len(target)

    def loss_items(self, target, opts=None) -> int:
        return len(target) if opts is not None and opts.loss is not None else super().loss_items(target)

    def count_correct(self, output, target, opts=None):
        if opts is not None and opts.accuracy is not None:
            correct, count = import_object(opts.accuracy, "task.accuracy")(output, target)
            return torch.as_tensor(correct), int(count)
        if target.is_floating_point():
            return torch.tensor(float("nan")), 1  # no accuracy for real-valued targets
        return super().count_correct(output, target)

    def is_language_model(self, opts) -> bool:
        return opts.language_model

    def is_cross_entropy(self, opts) -> bool:
        return opts.loss is None
