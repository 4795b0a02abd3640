"""The lock-step trainer and the hook points where events and probes plug in."""

from .hooks import Hook
from .trainer import ArmState, Trial, derive_seed, load_weights

__all__ = ["ArmState", "Hook", "Trial", "derive_seed", "load_weights"]
