"""Hook points of a trial, and the guard protocol of an arm's optimizer step. The trainer
knows nothing about faults, diagnostics or privacy: they subclass Hook (or Guard) and act at
these named moments.

Order within one step, for each live arm in turn:
    before_step -> forward/backward -> after_backward -> [mitigations] -> optimizer step -> after_step
then on_step_end once, and every `plan.eval_every` steps, at the end and at the steps hooks
add to `trial.eval_steps`, on_eval once for the whole trial. When a rollback mitigation
executes a step again, before_step/after_backward run again with `arm.attempt == 1`.
`step` is the number of the update being made (1-based); step 0 is the initial state.
"""


def steps_every(trial, every) -> int:
    """A cadence in steps: a number, or 'epoch' (the trial's steps per epoch). Probes and
    checkpoints share it (trainlab.probes.probe_every is this function)."""
    return trial.stream.steps_per_epoch if every == "epoch" else int(every)


class Steps:
    """A set of steps kept as explicit steps plus `range`s, so that a cadence over a long plan
    (every: 1 with plan.steps 10**10) costs a few integers, not a set of every step; `in`
    is arithmetic (range membership), `add` and `update` work as on a set."""

    def __init__(self, steps=()):
        self.explicit: set[int] = set()
        self.ranges: list[range] = []
        self.update(steps)

    def add(self, step: int) -> None:
        self.explicit.add(step)

    def update(self, steps) -> None:
        if isinstance(steps, range):
            self.ranges.append(steps)  # kept whole: never enumerated
        else:
            self.explicit.update(steps)

    def __contains__(self, step) -> bool:
        return step in self.explicit or any(step in r for r in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.explicit) or any(self.ranges)


class Hook:
    def on_start(self, trial) -> None:
        """After models and optimizers are built, before the first step."""

    def before_step(self, trial, arm, step: int) -> None:
        """Before the forward pass of update `step`. `arm.batch` holds (inputs, targets);
        those tensors are shared by every arm: replace the tuple, never edit them in place."""

    def after_backward(self, trial, arm, step: int) -> None:
        """Gradients are in `p.grad`; the optimizer has not stepped."""

    def after_step(self, trial, arm, step: int) -> None:
        """The optimizer has stepped; the weights are those after update `step`."""

    def on_step_end(self, trial, step: int) -> None:
        """Every live arm has made update `step` (before any evaluation at that step)."""

    def on_eval(self, trial, step: int) -> None:
        """After every arm was evaluated at `step` (arm.last_eval holds the numbers)."""

    def on_end(self, trial) -> None:
        """After the last step and the final evaluation."""


# ---------------------------------------------------------------- guards

STEP, SKIP, ROLLBACK = "step", "skip", "rollback"  # verdicts on one optimizer step


class Guard:
    """Part of an arm (a mitigation): sees each step after backward and returns a verdict

        STEP      go on with the optimizer step (the guard may have changed the gradients)
        SKIP      leave weights and optimizer state as they are this step
        ROLLBACK  restore the last good state and execute the step again (once)

    and may act after the optimizer step (bounding state, taking snapshots)."""

    def verdict(self, arm, step: int, loss: float) -> str:
        return STEP

    def after_step(self, arm, step: int) -> None:
        """The optimizer has stepped and the weights are finite."""
