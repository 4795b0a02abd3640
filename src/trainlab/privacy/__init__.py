"""DP-SGD: per-sample clipping engines that agree, accounting, and the consistency suite."""

from .engine import CLIPPING, MODES, DPEngine, StepResult, clip_factors, per_sample_loss

__all__ = ["CLIPPING", "MODES", "DPEngine", "StepResult", "clip_factors", "per_sample_loss"]
