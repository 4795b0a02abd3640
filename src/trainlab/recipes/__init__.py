"""Recipes: ready studies (a spec builder + its analysis + its report) behind CLI commands."""

from . import ablation, fault_recovery  # noqa: F401  register their reports
