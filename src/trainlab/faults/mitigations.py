"""Mitigations: arm options that guard the optimizer step, measured like an optimizer.

Each is a Guard (engine/hooks.py): it sees the step after backward and returns a verdict
(STEP, SKIP or ROLLBACK), and may act after the optimizer step (bounding state, taking
snapshots).

    arms:
      - {optimizer: adam, lr: 0.001, mitigations: [{kind: grad_clip, max_norm: 1.0}]}
"""

import copy
import math
import statistics
from collections import deque

import torch
from pydantic import Field

from ..engine.hooks import ROLLBACK, SKIP, STEP, Guard
from ..options import NoOptions, Strict
from ..plugin import register_mitigation


def grads_of(arm) -> list[torch.Tensor]:
    return [p.grad for p in arm.model.parameters() if p.grad is not None]


def grad_norm(arm) -> float:
    grads = grads_of(arm)
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))) if grads else 0.0


# ---------------------------------------------------------------- none


def no_guard(options: dict) -> Guard:
    return Guard()


register_mitigation("none", no_guard, doc="no mitigation")


# ---------------------------------------------------------------- skip a non-finite step


class SkipNonFinite(Guard):
    def verdict(self, arm, step, loss):
        if not math.isfinite(loss) or not math.isfinite(grad_norm(arm)):
            return SKIP
        return STEP


def skip_nonfinite(options: dict) -> Guard:
    return SkipNonFinite()


register_mitigation("skip_nonfinite", skip_nonfinite, Options=NoOptions, doc="skip a step whose loss or gradient is NaN/Inf")


# ---------------------------------------------------------------- gradient clipping


class ClipOptions(Strict):
    max_norm: float = Field(1.0, gt=0, description="clip the total gradient norm to this value")


class GradClip(Guard):
    def __init__(self, options: dict):
        self.max_norm = options["max_norm"]

    def verdict(self, arm, step, loss):
        torch.nn.utils.clip_grad_norm_(arm.model.parameters(), self.max_norm)
        return STEP


register_mitigation("grad_clip", GradClip, Options=ClipOptions, doc="clip the gradient norm")


# ---------------------------------------------------------------- roll back on a spike


class RollbackOptions(Strict):
    loss_factor: float = Field(10.0, gt=1, description="spike: loss above factor x recent median")
    grad_factor: float = Field(100.0, gt=1, description="spike: gradient norm above factor x recent median")
    window: int = Field(20, ge=3, description="recent steps the medians are taken over")


class Rollback(Guard):
    """Keeps the last state known to be good and returns to it on a loss or gradient spike.

    A state becomes 'good' once the step after it passed the spike test, so a corruption
    that only shows one step later (optimizer state) is still rolled back."""

    def __init__(self, options: dict):
        self.options = options
        self.losses: deque[float] = deque(maxlen=options["window"])
        self.norms: deque[float] = deque(maxlen=options["window"])
        self.good = None
        self.candidate = None

    def spiked(self, loss: float, norm: float) -> bool:
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return True
        if len(self.losses) < 3:
            return False
        return (loss > self.options["loss_factor"] * statistics.median(self.losses)
                or norm > self.options["grad_factor"] * statistics.median(self.norms))

    def verdict(self, arm, step, loss):
        norm = grad_norm(arm)
        if self.spiked(loss, norm):
            if self.good is None:
                return SKIP
            arm.model.load_state_dict(self.good[0])
            arm.optimizer.load_state_dict(copy.deepcopy(self.good[1]))
            self.candidate = None
            return ROLLBACK
        self.losses.append(loss)
        self.norms.append(norm)
        if self.candidate is not None:
            self.good = self.candidate
        return STEP

    def after_step(self, arm, step):
        self.candidate = (copy.deepcopy(arm.model.state_dict()), copy.deepcopy(arm.optimizer.state_dict()))


register_mitigation("rollback", Rollback, Options=RollbackOptions,
                    doc="restore the last good state and redo the step on a loss/gradient spike")


# ---------------------------------------------------------------- bound optimizer state


class BoundOptions(Strict):
    bound: float = Field(1.0, gt=0, description="largest magnitude allowed in the state")
    keys: list[str] = Field(["exp_avg", "momentum_buffer"], min_length=1,
                            description="optimizer state entries to bound (squared bound for *_sq/square_avg)")


class BoundState(Guard):
    """Clamps before the step (so a corrupted entry is bounded before it is used) and after it."""

    def __init__(self, options: dict):
        self.bound, self.keys = options["bound"], set(options["keys"])

    def verdict(self, arm, step, loss):
        self.after_step(arm, step)
        return STEP

    @torch.no_grad()
    def after_step(self, arm, step):
        for state in arm.optimizer.state.values():
            for key, value in state.items():
                if key in self.keys and torch.is_tensor(value) and value.is_floating_point():
                    squared = key.endswith("_sq") or key == "square_avg"
                    limit = self.bound**2 if squared else self.bound
                    torch.nan_to_num(value, nan=0.0, posinf=limit, neginf=-limit, out=value)
                    value.clamp_(0.0 if squared else -limit, limit)


register_mitigation("bound_state", BoundState, Options=BoundOptions, doc="clamp optimizer state entries")
