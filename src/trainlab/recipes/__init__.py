"""Recipes: ready studies (a spec builder + its analysis + its report) behind CLI commands."""

from . import fault_recovery  # noqa: F401  registers the fault-recovery report
