"""The lock-step trainer and the hook points where events and probes plug in."""

from .hooks import ROLLBACK, SKIP, STEP, Guard, Hook
from .trainer import ArmState, MemorySink, Trial, derive_seed, load_weights

__all__ = ["ROLLBACK", "SKIP", "STEP", "ArmState", "Guard", "Hook", "MemorySink", "Trial", "derive_seed", "load_weights"]
