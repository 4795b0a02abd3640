"""Report builders by name (`output.report`). A recipe registers its own.

`build(study_dir)` writes the report from stored data only (so `trainlab report` can rebuild
it); `on_trial_end(store, plan)`, when given, writes per-trial outputs as trials finish."""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..registry import Registry

REPORTS = Registry("report")


@dataclass(frozen=True)
class ReportDef:
    build: Callable[[Path], Path | None]
    on_trial_end: Callable | None = None
    doc: str = ""
