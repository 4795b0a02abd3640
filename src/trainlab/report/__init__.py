"""Markdown reports and figures built from stored data only."""

from .markdown import build_report, build_study_report
from .registry import REPORTS, ReportDef

__all__ = ["REPORTS", "ReportDef", "build_report", "build_study_report"]
