"""Probes: measurements with a cadence, recorded in the trial's metrics stream."""

from .norms import NormsProbe
from .registry import PROBES, ProbeDef

__all__ = ["NormsProbe", "PROBES", "ProbeDef"]
