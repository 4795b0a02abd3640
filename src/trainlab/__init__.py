"""trainlab: controlled experiments on neural-network training dynamics.

Public API (everything else may change):

    spec = trainlab.load_spec("examples/demo.yaml", ["plan.steps=50"])
    study_dir = trainlab.run_study(spec)
    frame = trainlab.load(study_dir)          # every metrics record as a DataFrame (a column per swept field)
    trainlab.export_study(study_dir, [{"kind": "tensorboard"}])   # log it to a tracker afterwards

Your own model, data, optimizer, probes, events, mitigations and fault models are plugins
(docs/plugins.md): register them with the `register_*` functions and name their module in
the spec (`plugins: [my_module]`).
"""

from .analysis import load, load_summaries
from .engine import Guard, Hook, MemorySink, Trial
from .errors import SpecError, TrialsFailed, UserError
from .faults import FaultModel
from .options import Strict as Options
from .loggers import Logger
from .plugin import (Plugin, Registries, register, register_command, register_event, register_fault_model,
                     register_job, register_logger, register_mitigation, register_optimizer, register_probe,
                     register_report, register_task, registries)
from .recipes.batch_size import ProfileRecord, profile_batch_sizes
from .report import build_report
from .spec import load_spec
from .study import export_study, resume_study, run_study
from .study.store import version
from .tasks import Task, TaskData

__version__ = version()

__all__ = ["FaultModel", "Guard", "Hook", "Logger", "MemorySink", "Options", "Plugin", "ProfileRecord", "Registries", "SpecError", "Task",
           "TaskData", "Trial", "TrialsFailed", "UserError", "__version__", "build_report", "export_study", "load", "load_spec",
           "load_summaries",
           "profile_batch_sizes", "register", "register_command", "register_event", "register_fault_model",
           "register_job", "register_logger", "register_mitigation", "register_optimizer", "register_probe", "register_report", "register_task",
           "registries", "resume_study", "run_study"]
