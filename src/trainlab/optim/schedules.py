"""Learning-rate schedules as a factor of each group's base lr: constant, step, cosine, warm-up."""

import math


def lr_factor(schedule: dict, step: int, total_steps: int) -> float:
    """Factor applied to the base lr for update number `step` (0-based)."""
    warmup = schedule.get("warmup_steps", 0)
    if step < warmup:
        return (step + 1) / warmup
    t = step - warmup
    kind = schedule.get("kind", "constant")
    if kind == "step":
        return schedule["gamma"] ** (t // schedule["step_size"])
    if kind == "cosine":
        span = max(1, total_steps - warmup)
        low = schedule["min_factor"]
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
    return 1.0


def set_lr_factor(optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
