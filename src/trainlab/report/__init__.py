"""Markdown reports and figures built from stored data only (report builders are plugins)."""

from .markdown import build_report, build_study_report

__all__ = ["build_report", "build_study_report"]
