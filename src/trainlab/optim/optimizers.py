"""Optimizers as plugins. Each validates its hyperparameters (its options model) and builds an
optimizer for one model: `build(model, lr, options, example_inputs)`.

Every optimizer is built on the parameters of one model; its param groups carry `base_lr`
so that schedules (and later mitigations) can rescale them uniformly. Besides the built-ins,
any `torch.optim.Optimizer` subclass can be named by import path (`torch.optim.NAdam`,
`my_pkg.opt:Lion`): its hyperparameters are validated against its constructor's signature.
"""

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..errors import SpecError
from ..options import Strict
from ..plugin import REGISTRIES, Registries, register_optimizer
from .imported import optimizer_from_path
from .muon import Muon, split_for_muon
from .roles import parameter_roles


class OptimizerGroup:
    """Several optimizers acting as one (Muon + AdamW): step, zero_grad, state, state_dict."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], split: dict | None = None):
        self.optimizers = optimizers
        self.split = split  # which parameters each part got (reported in the arm's summary)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, sd in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(sd)


def with_base_lr(optimizer):
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    return optimizer


def build_optimizer(arm: dict, model: nn.Module, example=None, registries: Registries | None = None):
    """Build the optimizer an (resolved) arm spec describes, for `model`; `example` is a couple
    of training inputs, for optimizers that read parameter roles from a forward pass (Muon)."""
    plugin = (registries or REGISTRIES).optimizers.get(arm["optimizer"])
    hparams = {k: arm[k] for k in plugin.Options.model_fields}
    return with_base_lr(plugin.target(model, arm["lr"], hparams, example))


# ---------------------------------------------------------------- entries


class SGDOptions(Strict):
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    dampening: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _nesterov(self):
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening 0")
        return self


def _sgd(model, lr, hp, example=None):
    return torch.optim.SGD(model.parameters(), lr=lr, **hp)


register_optimizer("sgd", _sgd, Options=SGDOptions, doc="stochastic gradient descent on minibatches")
register_optimizer("gd", _sgd, Options=SGDOptions, full_batch=True,
                   doc="gradient descent: SGD on the whole training set each step")


class AdamOptions(Strict):
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    amsgrad: bool = False


class AdamWOptions(AdamOptions):
    weight_decay: float = Field(0.01, ge=0)


def _adam_like(cls):
    def build(model, lr, hp, example=None):
        return cls(model.parameters(), lr=lr, betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                   weight_decay=hp["weight_decay"], amsgrad=hp["amsgrad"])
    return build


register_optimizer("adam", _adam_like(torch.optim.Adam), Options=AdamOptions, doc="Adam (L2 weight decay)")
register_optimizer("adamw", _adam_like(torch.optim.AdamW), Options=AdamWOptions, doc="AdamW (decoupled weight decay)")


class RMSpropOptions(Strict):
    alpha: float = Field(0.99, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    centered: bool = False


def _rmsprop(model, lr, hp, example=None):
    return torch.optim.RMSprop(model.parameters(), lr=lr, **hp)


register_optimizer("rmsprop", _rmsprop, Options=RMSpropOptions, doc="RMSprop")


class MuonOptions(Strict):
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(0.1, ge=0)
    ns_steps: int = Field(5, gt=0, lt=100)
    adjust_lr_fn: Literal["original", "match_rms_adamw"] = "original"
    adamw_lr_ratio: float = Field(0.1, gt=0, description="AdamW lr = lr * adamw_lr_ratio")
    adamw_beta1: float = Field(0.9, ge=0, lt=1)
    adamw_beta2: float = Field(0.95, ge=0, lt=1)
    adamw_eps: float = Field(1e-8, gt=0)
    adamw_weight_decay: float = Field(0.0, ge=0)
    muon_params: list[str] | None = Field(None, description="name patterns (fnmatch) moved to Muon, e.g. ['blocks.*.attn.*']")
    adamw_params: list[str] | None = Field(None, description="name patterns (fnmatch) moved to AdamW")
    allow_empty_muon: bool = Field(False, description="train even when no parameter is a hidden matrix (the arm "
                                                      "is then AdamW alone)")


def _muon(model, lr, hp, example=None):
    if example is None:
        raise ValueError("Muon finds each parameter's role from a forward pass: give example inputs")
    roles = parameter_roles(model, example)
    layouts, adamw_names = split_for_muon(roles, hp["muon_params"], hp["adamw_params"])
    if not layouts and not hp["allow_empty_muon"]:
        raise SpecError("optimizer", "Muon found no hidden weight matrix in this model (roles: "
                        f"{describe_roles(roles.values())}); name some with muon_params, or set allow_empty_muon: true "
                        "to train it with AdamW alone")
    params = dict(model.named_parameters())
    parts = []
    by_layout = {}
    for name, layout in layouts.items():
        by_layout.setdefault(layout, []).append(params[name])
    if by_layout:
        groups = [{"params": ps, "layout": layout} for layout, ps in by_layout.items()]
        parts.append(Muon(groups, lr=lr, weight_decay=hp["weight_decay"], momentum=hp["momentum"],
                          nesterov=hp["nesterov"], ns_steps=hp["ns_steps"], adjust_lr_fn=hp["adjust_lr_fn"]))
    if adamw_names:
        parts.append(torch.optim.AdamW([params[n] for n in adamw_names], lr=lr * hp["adamw_lr_ratio"],
                                       betas=(hp["adamw_beta1"], hp["adamw_beta2"]), eps=hp["adamw_eps"],
                                       weight_decay=hp["adamw_weight_decay"]))
    for opt in parts:
        with_base_lr(opt)
    split = {"muon": group_summary([roles[n] for n in layouts]), "adamw": group_summary([roles[n] for n in adamw_names]),
             "notes": split_notes(roles, layouts)}
    return OptimizerGroup(parts, split)


def split_notes(roles: dict, layouts: dict) -> list[str]:
    notes = []
    if not layouts:
        notes.append("Muon got no parameters (allow_empty_muon): the arm trained with AdamW alone")
    unreached = [name for name, r in roles.items() if not r.reached]
    if unreached:
        notes.append(f"{len(unreached)} parameter(s) not reached by the example forward pass got the role of their "
                     f"module's class ({', '.join(unreached[:4])}{', ...' if len(unreached) > 4 else ''})")
    return notes


def group_summary(roles: list) -> dict:
    """Parameter count, tensor names and roles of one part of a split optimizer."""
    return {"parameters": sum(r.numel for r in roles), "tensors": len(roles), "roles": count_roles(roles),
            "names": [r.name for r in roles]}


def count_roles(roles) -> dict:
    counts = {}
    for r in roles:
        counts[r.role] = counts.get(r.role, 0) + r.numel
    return counts


def describe_roles(roles) -> str:
    return ", ".join(f"{role} {n:,}" for role, n in count_roles(roles).items()) or "none"


register_optimizer("muon", _muon, Options=MuonOptions,
                   doc="Muon on the hidden weight matrices (by role), AdamW (lr * adamw_lr_ratio) on embeddings, "
                       "head, norms, biases and the rest")
REGISTRIES.optimizers.resolver = optimizer_from_path  # any torch.optim.Optimizer subclass, by import path
