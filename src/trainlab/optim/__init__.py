"""Optimizer registry, the Muon parameter split, and learning-rate schedules."""

from .muon import ReferenceMuon, split_for_muon
from .optimizers import OPTIMIZERS, OptimizerGroup, build_optimizer
from .schedules import lr_factor, set_lr_factor

__all__ = ["OPTIMIZERS", "OptimizerGroup", "ReferenceMuon", "build_optimizer", "lr_factor",
           "set_lr_factor", "split_for_muon"]
