"""Recipes: ready studies (a spec builder, its analysis and its report) and the commands that
run them; `core` holds the commands every study shares. Each module registers its own
commands and reports as plugins."""

from . import ablation, batch_size, core, dp_consistency, dp_profile, dynamics, dynamics_report, fault_recovery  # noqa: F401
