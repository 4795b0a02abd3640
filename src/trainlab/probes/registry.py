"""The probe registry: kind -> (Options model, factory returning a Hook)."""

from dataclasses import dataclass
from typing import Callable

from ..engine.hooks import Hook
from ..registry import Registry
from ..spec import Strict

PROBES = Registry("probe")


@dataclass(frozen=True)
class ProbeDef:
    Options: type[Strict]
    make: Callable[[dict], Hook]
    doc: str = ""


def probe_every(trial, every) -> int:
    """A probe's cadence in steps: a number, or 'epoch' (the trial's steps per epoch)."""
    return trial.stream.steps_per_epoch if every == "epoch" else int(every)
