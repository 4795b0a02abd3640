"""Events: things scheduled at steps, registered as plugins (options model + Hook factory).
The built-in one here saves checkpoints; the fault event lives with the faults."""

import torch
from pydantic import Field

from ..options import Strict
from ..plugin import register_event
from .hooks import Hook


class CheckpointOptions(Strict):
    steps: list[int] = Field(min_length=1, description="save after these updates (0 = initial weights)")
    optimizer: bool = Field(True, description="also save the optimizer state")


class Checkpoint(Hook):
    """Save each arm's state_dict (and optimizer state) to checkpoints/step_NNNNNN/<arm>.pt."""

    def __init__(self, options: dict):
        self.steps = set(options["steps"])
        self.optimizer = options["optimizer"]

    def on_start(self, trial) -> None:
        if 0 in self.steps:
            for arm in trial.arms:
                self.save(trial, arm, 0)

    def after_step(self, trial, arm, step: int) -> None:
        if step in self.steps:
            self.save(trial, arm, step)

    def save(self, trial, arm, step: int) -> None:
        if trial.artifact_dir is None:
            return
        folder = trial.artifact_dir / "checkpoints" / f"step_{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        state = {"model": arm.model.state_dict(), "step": step, "arm": arm.name}
        if self.optimizer:
            state["optimizer"] = arm.optimizer.state_dict()
        tmp = folder / f".{arm.name}.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(folder / f"{arm.name}.pt")


register_event("checkpoint", Checkpoint, Options=CheckpointOptions, doc="save weights at chosen steps")
