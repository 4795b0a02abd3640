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
