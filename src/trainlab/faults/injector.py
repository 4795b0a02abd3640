"""The `fault` event: one fault at one site and step, applied identically to every arm.

    events:
      - {kind: fault, step: 120, target: weights, tensor: fc1.weight, indices: [3, 4],
         fault: value, values: [3.6e2, 1.2e8]}

The event is fully concrete (sites, bits, values are numbers in the spec), which is what
makes replay exact. `trainlab.faults.plan` draws such events from a seed.
"""

from typing import Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..engine.hooks import Hook
from ..errors import SpecError
from ..options import Strict
from ..plugin import REGISTRIES, register_event
from .models import Fault, FaultModel
from .targets import STATE_KEYS, TARGETS, activation_modules, state_entry


def fault_model(name: str, info: ValidationInfo | None = None) -> FaultModel:
    """The fault model plugin `name` (from the registries being resolved with, else this process's)."""
    registries = (info.context or {}).get("registries") if info is not None else None
    registry = (registries or REGISTRIES).fault_models
    if name not in registry:
        raise ValueError(f"unknown fault {name!r} (allowed: {', '.join(registry.names())})")
    return registry.get(name).target()


class FaultOptions(Strict):
    step: int = Field(ge=1, description="the update the fault hits (weights/state: just before it)")
    target: Literal[TARGETS] = "weights"
    tensor: str = Field(description="parameter name, or module name for activations")
    state: Literal[tuple(STATE_KEYS)] = "first_moment"
    indices: list[int] = Field(min_length=1, description="flat element indices")
    fault: str = Field("bitflip", description="a fault model: bitflip, value, stuck, zero, sign_flip, add_noise, "
                                              "mul_noise, or one a plugin registers")
    bits: list[list[int]] | None = Field(None, description="bitflip: bits to flip, per element")
    values: list[float] | None = Field(None, description="value/stuck: new values; *_noise: draws")
    duration: int = Field(1, ge=1, description="stuck: number of steps the values stay stuck")
    eval_every_after: int | None = Field(None, ge=1, description="evaluate every N steps from the injection on "
                                                                "(recovery needs a denser cadence than the run)")

    @field_validator("fault")
    @classmethod
    def _known(cls, value, info: ValidationInfo):
        fault_model(value, info)
        return value

    @model_validator(mode="after")
    def _complete(self, info: ValidationInfo):
        need = fault_model(self.fault, info).needs
        if need and len(getattr(self, need) or []) != len(self.indices):
            raise ValueError(f"fault {self.fault!r} needs `{need}` with one entry per index ({len(self.indices)})")
        if min(self.indices) < 0:
            raise ValueError("indices must be >= 0")
        return self


class FaultInjector(Hook):
    def __init__(self, options: dict):
        self.o = options
        self.model = fault_model(options["fault"])
        self.last_step = options["step"] + (options["duration"] - 1 if self.model.lasts else 0)
        self.records: dict[str, dict] = {}
        self.handles: dict[str, object] = {}  # forward hooks of activation faults, per arm
        self.sites: dict[str, object] = {}  # per arm: the parameter or module the fault hits
        self.batch = None

    def active(self, arm, step) -> bool:
        return self.o["step"] <= step <= self.last_step and arm.attempt == 0

    # ------------------------------------------------------------ set-up

    def on_start(self, trial):
        step, every = self.o["step"], self.o["eval_every_after"]
        trial.eval_steps.update({step - 1, step})  # right before and right after the injected update
        if every:
            trial.eval_steps.update(range(step, trial.total_steps + 1, every))
        self.check_site(trial)
        self.index = torch.tensor(self.o["indices"], device=trial.device)
        self.faults: dict[torch.dtype, Fault] = {}
        for arm in trial.arms:  # look the site up once: the injected step should cost nothing extra
            named = activation_modules(arm.model) if self.o["target"] == "activations" else dict(arm.model.named_parameters())
            self.sites[arm.name] = named[self.o["tensor"]]
        self.fault_for(torch.empty(0, dtype=trial.dtype, device=trial.device))

    def check_site(self, trial):
        model = trial.arms[0].model
        where = "events[fault].tensor"
        if self.o["target"] == "activations":
            modules = activation_modules(model)
            if self.o["tensor"] not in modules:
                raise SpecError(where, f"no module {self.o['tensor']!r} (allowed: {', '.join(modules)})")
            return
        params = dict(model.named_parameters())
        if self.o["tensor"] not in params:
            raise SpecError(where, f"no parameter {self.o['tensor']!r} (allowed: {', '.join(params)})")
        numel = params[self.o["tensor"]].numel()
        if max(self.o["indices"]) >= numel:
            raise SpecError("events[fault].indices", f"index {max(self.o['indices'])} out of range for "
                                                     f"{self.o['tensor']} ({numel} elements)")

    # ------------------------------------------------------------ injection points

    def before_step(self, trial, arm, step):
        if not self.active(arm, step):
            return
        if step == self.o["step"] and self.batch is None:
            # references only: the step's batch is never edited in place, so it is saved at the end
            self.batch = {"inputs": trial.step_batch[0], "targets": trial.step_batch[1]}
            if trial.indices is not None:  # generated data has no sample indices
                self.batch["indices"] = trial.indices
        target, site = self.o["target"], self.sites[arm.name]
        if target == "weights":
            self.corrupt(arm, step, site.data)
        elif target == "optimizer_state":
            key, tensor = state_entry(arm.optimizer, site, self.o["state"])
            if tensor is None:
                self.note(arm, step, applied=False, reason=f"{arm.spec['optimizer']} keeps no {self.o['state']} "
                                                           f"for {self.o['tensor']} at this step")
            else:
                self.corrupt(arm, step, tensor, state_key=key)
        elif target == "activations":
            self.handles[arm.name] = site.register_forward_hook(
                lambda m, inputs, out: self.corrupt_output(arm, step, out))

    def after_backward(self, trial, arm, step):
        handle = self.handles.pop(arm.name, None)
        if handle is not None:
            handle.remove()
        if self.active(arm, step) and self.o["target"] == "gradients":
            grad = self.sites[arm.name].grad
            if grad is None:
                self.note(arm, step, applied=False, reason="no gradient")
            else:
                self.corrupt(arm, step, grad)

    # ------------------------------------------------------------ the corruption itself

    @torch.no_grad()
    def corrupt(self, arm, step, tensor: torch.Tensor, **extra) -> None:
        flat = tensor.view(-1)
        old = flat[self.index]  # a gather: a fresh tensor, safe to keep
        new = self.fault_for(old)(old)
        flat[self.index] = new
        self.note(arm, step, applied=True, old=old, new=new, **extra)

    def corrupt_output(self, arm, step, output: torch.Tensor):
        flat = output.view(-1) if output.is_contiguous() else output.reshape(-1)
        if max(self.o["indices"]) >= flat.numel():
            self.note(arm, step, applied=False, reason=f"output of {self.o['tensor']} has {flat.numel()} elements")
            return None
        old = flat[self.index].detach()
        new = self.fault_for(old)(old)
        self.note(arm, step, applied=True, old=old, new=new)
        if output.is_contiguous() and not hasattr(output.grad_fn, "_saved_result"):
            flat[self.index] = new  # in place: the op that made it did not keep its output for backward
            return None
        return flat.index_put((self.index,), new).view_as(output)

    def fault_for(self, old: torch.Tensor) -> Fault:
        """The fault model prepared for this dtype (state and activations may differ from weights)."""
        if old.dtype not in self.faults:
            self.faults[old.dtype] = Fault(self.model, self.o, old.dtype, old.device)
        return self.faults[old.dtype]

    def note(self, arm, step, applied: bool, old=None, new=None, **extra) -> None:
        if arm.name in self.records:  # a stuck fault: keep the first application, count the rest
            self.records[arm.name]["applications"] += int(applied)
            return
        record = {"applied": applied, "step": step, "applications": int(applied), **extra}
        if old is not None:  # fresh tensors now, numbers at the end: nothing slow inside the step
            record["old"], record["new"] = old, new
        self.records[arm.name] = record

    # ------------------------------------------------------------ records

    def realised(self) -> dict:
        """Per arm: applied, step, and the old and new values as float64 numbers."""
        return {arm: {k: v.double().cpu().tolist() if torch.is_tensor(v) else v for k, v in record.items()}
                for arm, record in self.records.items()}

    def on_end(self, trial):
        if trial.artifacts is None:
            return
        config = {**{k: v for k, v in self.o.items() if k != "kind"}, "seed": trial.seed,
                  "dtype": trial.plan["dtype"], "arms": self.realised()}
        (trial.artifacts / "injection_config.json").write_json(config)
        if self.batch is not None:
            arrays = {k: v.detach().cpu().numpy() for k, v in self.batch.items()}
            (trial.artifacts / "injection_batch.npz").write_with(lambda fh: np.savez(fh, **arrays))


register_event("fault", FaultInjector, Options=FaultOptions, doc="inject one fault into every arm at one site and step",
               step_fields=("step",))
