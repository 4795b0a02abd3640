"""Every registry in one place; importing this module fills them all."""

from .engine.events import EVENTS as events
from .faults.mitigations import MITIGATIONS as mitigations
from .optim import OPTIMIZERS as optimizers
from .probes import PROBES as probes
from .report import REPORTS as reports
from .tasks import TASKS as tasks

from . import faults, recipes  # noqa: E402,F401  register the fault event and the recipes' reports

__all__ = ["events", "mitigations", "optimizers", "probes", "reports", "tasks"]
