"""When a probe runs."""


def probe_every(trial, every) -> int:
    """A probe's cadence in steps: a number, or 'epoch' (the trial's steps per epoch)."""
    return trial.stream.steps_per_epoch if every == "epoch" else int(every)
