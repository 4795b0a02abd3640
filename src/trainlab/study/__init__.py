"""Studies: the store on disk, sweep expansion, executors and the runner that ties them."""

from .runner import resume_study, run_study
from .store import StudyStore, atomic_write_json, read_jsonl
from .sweep import TrialPlan, expand

__all__ = ["StudyStore", "TrialPlan", "atomic_write_json", "expand", "read_jsonl", "resume_study", "run_study"]
