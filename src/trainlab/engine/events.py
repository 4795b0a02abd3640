"""Events: things scheduled at steps, registered as plugins (options model + Hook factory).
The built-in one here saves checkpoints; the fault event lives with the faults."""

from typing import Literal

from pydantic import Field, model_validator

from ..options import Strict
from ..plugin import register_event
from .hooks import Hook, Steps, steps_every


class CheckpointOptions(Strict):
    steps: list[int] = Field(default_factory=list, description="save after these updates (0 = initial weights)")
    every: int | Literal["epoch"] | None = Field(None, description="also every N updates, or every epoch (with the "
                                                                      "initial weights)")
    final: bool = Field(False, description="also after the last update")
    optimizer: bool = Field(True, description="also save the optimizer state")

    @model_validator(mode="after")
    def _some_step(self):
        if not self.steps and self.every is None and not self.final:
            raise ValueError("give steps, every or final: true (a checkpoint that never saves is a mistake)")
        if isinstance(self.every, int) and self.every < 1:
            raise ValueError(f"every must be at least 1 or 'epoch' (got {self.every})")
        return self


class Checkpoint(Hook):
    """Save each arm's state_dict (and optimizer state) to checkpoints/step_NNNNNN/<arm>.pt."""

    def __init__(self, options: dict):
        self.options = options
        self.optimizer = options["optimizer"]

    def on_start(self, trial) -> None:
        every = steps_every(trial, self.options["every"]) if self.options["every"] is not None else None
        self.steps = Steps(self.options["steps"])
        if every:
            self.steps.update(range(0, trial.total_steps + 1, every))
        if self.options["final"]:
            self.steps.add(trial.total_steps)
        if 0 in self.steps:
            for arm in trial.arms:
                self.save(trial, arm, 0)

    def after_step(self, trial, arm, step: int) -> None:
        if step in self.steps:
            self.save(trial, arm, step)

    def save(self, trial, arm, step: int) -> None:
        if trial.artifacts is None:
            return
        state = {"model": arm.model.state_dict(), "step": step, "arm": arm.name}
        if self.optimizer:
            state["optimizer"] = arm.optimizer.state_dict()
        # through the trial's anchor: a checkpoints/ or step_N/ that is a link is refused, not followed
        (trial.artifacts / "checkpoints" / f"step_{step:06d}" / f"{arm.name}.pt").save_torch(state)


register_event("checkpoint", Checkpoint, Options=CheckpointOptions, doc="save weights at chosen steps",
               step_fields=("steps",))
