"""Every registry in one place; importing this module fills them all."""

from .engine.events import EVENTS as events
from .optim import OPTIMIZERS as optimizers
from .probes import PROBES as probes
from .tasks import TASKS as tasks

__all__ = ["events", "optimizers", "probes", "tasks"]
