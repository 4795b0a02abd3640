"""Any `torch.optim.Optimizer` subclass named by import path, as an optimizer plugin.

    arms:
      - {optimizer: torch.optim.NAdam, lr: 0.002, momentum_decay: 0.004}
      - {optimizer: "my_package.optim:Lion", lr: 1.0e-4, betas: [0.9, 0.99]}

The class's constructor signature becomes its options model: every keyword argument after
`params` and `lr`, with the constructor's default, typed from it (a tuple default takes a
list of the same length), so unknown names and wrong types are the usual one-line errors
that list the allowed ones.
"""

import inspect
from typing import Any

import torch
from pydantic import Field, create_model

from ..errors import SpecError
from ..options import Strict
from ..plugin import Plugin, import_object


def optimizer_from_path(path: str, where: str) -> Plugin | None:
    if "." not in path and ":" not in path:
        return None  # a plain name: not an import path, so simply unknown
    cls = import_object(path, where)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise SpecError(where, f"{path!r} is not a torch.optim.Optimizer subclass")
    signature = inspect.signature(cls.__init__)
    options = options_from_signature(cls.__name__, signature)
    takes_lr = "lr" in signature.parameters
    tuples = {name for name, p in signature.parameters.items() if isinstance(p.default, tuple)}

    def build(model, lr, hp, example=None):
        kwargs = {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in hp.items()}
        return cls(model.parameters(), **({"lr": lr} if takes_lr else {}), **kwargs)

    doc = (inspect.getdoc(cls) or f"{path}").strip().splitlines()[0]
    return Plugin("optimizer", path, build, options, doc=f"{path}: {doc}")


def options_from_signature(name: str, signature: inspect.Signature) -> type[Strict]:
    fields = {}
    for param in list(signature.parameters.values())[1:]:  # after self
        if param.name in ("params", "lr") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is inspect.Parameter.empty:
            fields[param.name] = (Any, Field(description="required"))
        else:
            fields[param.name] = (annotation_of(param.default), Field(param.default))
    return create_model(f"{name}Options", __base__=Strict, **fields)


def annotation_of(default) -> Any:
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int | float  # an integer default may still be given a fraction (weight_decay=0)
    if isinstance(default, float):
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, tuple):
        return tuple[tuple(annotation_of(v) for v in default)] if default else tuple
    return Any
