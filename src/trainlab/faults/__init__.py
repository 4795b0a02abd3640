"""Fault injection: fault models, targets, the `fault` event, plans drawn from a seed, replay."""

from .injector import FaultInjector, FaultOptions
from .mitigations import MITIGATIONS
from .models import EXPONENT_BITS, FAULTS, Fault, flip_bits
from .targets import STATE_KEYS, TARGETS

__all__ = ["EXPONENT_BITS", "FAULTS", "FaultInjector", "FaultOptions", "MITIGATIONS", "STATE_KEYS", "TARGETS",
           "Fault", "flip_bits"]
