"""trainlab: controlled experiments on neural-network training dynamics.

Public API (everything else may change):

    spec = trainlab.load_spec("examples/demo.yaml", ["plan.steps=50"])
    study_dir = trainlab.run_study(spec)
    frame = trainlab.load(study_dir)          # every metrics record as a DataFrame
"""

__version__ = "0.1.0"

from .analysis import load, load_summaries  # noqa: E402
from .engine import Hook, Trial  # noqa: E402
from .errors import SpecError, UserError  # noqa: E402
from .profiler import ProfileRecord, profile_batch_sizes  # noqa: E402
from .report import build_report  # noqa: E402
from .spec import load_spec  # noqa: E402
from .study import resume_study, run_study  # noqa: E402

__all__ = ["Hook", "ProfileRecord", "SpecError", "Trial", "UserError", "__version__", "build_report", "load", "load_spec",
           "load_summaries", "profile_batch_sizes", "resume_study", "run_study"]
