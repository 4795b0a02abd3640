"""Experiment trackers a study writes to as it runs (`output.loggers`, `--log NAME`) or after
the fact (`trainlab export`): TensorBoard, MLflow, Weights & Biases (offline). Each needs its
optional extra; the base module says how a logger plugin is written."""

from . import mlflow, tensorboard, wandb  # noqa: F401  (they register themselves)
from .base import Logger, PerArm, arm_hyperparameters, scalars

__all__ = ["Logger", "PerArm", "arm_hyperparameters", "scalars"]
