"""Tidy tables from a study directory."""

from .tables import arm_table, load, load_summaries

__all__ = ["arm_table", "load", "load_summaries"]
