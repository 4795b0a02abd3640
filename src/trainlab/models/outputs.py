"""Calling a model the same way whatever it is: inputs as a tensor (positional) or a dict of
tensors (keywords, as Hugging Face models take them), and the output tensor read from what
the model returns (a tensor, a Hugging Face ModelOutput's `.logits`, or the first tensor of
a tuple or dict)."""

import torch
from torch import nn


def model_output(result) -> torch.Tensor:
    if isinstance(result, torch.Tensor):
        return result
    if getattr(result, "logits", None) is not None:
        return result.logits
    values = result.values() if isinstance(result, dict) else result if isinstance(result, (tuple, list)) else []
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"the model returned a {type(result).__name__} with no output tensor (give a tensor, or an object "
                    "with .logits)")


def forward(model: nn.Module, inputs) -> torch.Tensor:
    return model_output(model(**inputs) if isinstance(inputs, dict) else model(inputs))
