"""Faults: fault models, where they land, injection plans drawn up front, and mitigations."""

from . import mitigations  # noqa: F401  the built-in mitigations register as plugins
from .injector import FaultInjector, FaultOptions, fault_model
from .models import EXPONENT_BITS, Fault, FaultModel, flip_bits
from .targets import STATE_KEYS, TARGETS

__all__ = ["EXPONENT_BITS", "Fault", "FaultInjector", "FaultModel", "FaultOptions", "STATE_KEYS", "TARGETS",
           "fault_model", "flip_bits"]
