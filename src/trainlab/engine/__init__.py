"""The lock-step trainer and the hook points where events and probes plug in."""

from .hooks import Hook
from .trainer import ArmState, MemorySink, Trial, derive_seed, load_weights

__all__ = ["ArmState", "Hook", "MemorySink", "Trial", "derive_seed", "load_weights"]
