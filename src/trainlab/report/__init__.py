"""Markdown reports and figures built from stored data only."""

from .markdown import build_report

__all__ = ["build_report"]
