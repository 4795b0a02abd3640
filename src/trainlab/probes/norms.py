"""`norms`: per-parameter weight norm, gradient norm and update/weight ratio."""

import torch
from pydantic import Field

from ..engine.hooks import Hook
from ..options import Strict
from ..plugin import register_probe
from ..engine.hooks import steps_every as probe_every


class NormsOptions(Strict):
    params: list[str] | None = Field(None, description="parameter names to watch (default: all)")


class NormsProbe(Hook):
    def __init__(self, options: dict):
        self.options = options
        self.every = 1
        self.names = options["params"]
        self._before: dict[str, dict[str, torch.Tensor]] = {}
        self._grads: dict[str, dict[str, float]] = {}

    def on_start(self, trial):
        self.every = probe_every(trial, self.options["every"])

    def _watched(self, arm):
        return [(n, p) for n, p in arm.model.named_parameters() if self.names is None or n in self.names]

    def before_step(self, trial, arm, step):
        if step % self.every == 0:
            self._before[arm.name] = {n: p.detach().clone() for n, p in self._watched(arm)}

    def after_backward(self, trial, arm, step):
        if step % self.every == 0:
            self._grads[arm.name] = {n: float(p.grad.norm()) if p.grad is not None else 0.0
                                     for n, p in self._watched(arm)}

    def after_step(self, trial, arm, step):
        before = self._before.pop(arm.name, None)
        grads = self._grads.pop(arm.name, {})
        if before is None:
            return
        record = {"kind": "probe", "probe": "norms", "arm": arm.name, "step": step}
        with torch.no_grad():
            for name, p in self._watched(arm):
                weight = float(p.norm())
                record[f"weight_norm/{name}"] = weight
                record[f"grad_norm/{name}"] = grads.get(name, 0.0)
                record[f"update_ratio/{name}"] = float((p - before[name]).norm()) / max(weight, 1e-30)
        trial.log(record)


register_probe("norms", NormsProbe, Options=NormsOptions, doc="weight/gradient norms and update ratios")
