"""Studies: the store on disk, sweep expansion, executors and the runner that ties them."""

from .loggers import export as export_study
from .runner import resume_study, run_study
from .store import StudyStore, atomic_write_json, read_jsonl
from .sweep import TrialPlan, expand

__all__ = ["StudyStore", "export_study", "TrialPlan", "atomic_write_json", "expand", "read_jsonl", "resume_study", "run_study"]
