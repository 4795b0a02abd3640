"""Optimizer registry, the Muon parameter split, and learning-rate schedules."""

from .muon import Muon, split_for_muon
from .roles import parameter_roles
from .optimizers import OptimizerGroup, build_optimizer
from .schedules import lr_factor, set_lr_factor

__all__ = ["OptimizerGroup", "Muon", "build_optimizer", "lr_factor",
           "parameter_roles", "set_lr_factor", "split_for_muon"]
