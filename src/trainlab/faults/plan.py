"""Draw an injection plan up front: one concrete `fault` event per experiment, from one seed.

The plan depends only on the seed, the options and the model's shapes, never on the arms,
so every arm of an experiment gets the same fault and the plan can be written down
(`all_injection_configs.json`) before any training starts.
"""

from typing import Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..models.outputs import forward
from ..options import Strict
from .injector import fault_model
from .models import EXPONENT_BITS
from .targets import STATE_KEYS, TARGETS, activation_modules

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class FaultPlanOptions(Strict):
    fault: str = Field("value", description="a fault model (registered: bitflip, value, stuck, ...)")
    target: Literal[TARGETS] = "weights"
    layer: str | None = Field(None, description="parameter/module name; default: drawn per experiment")
    count: int = Field(16, ge=1, description="elements hit per fault")
    contiguous: bool = Field(True, description="hit count contiguous elements (else scattered)")
    bit: int | None = Field(None, ge=0, le=63, description="bitflip: always this bit")
    bit_range: tuple[int, int] | None = Field(None, description="bitflip: a bit drawn from [lo, hi]; 'exponent' via CLI")
    bits_per_element: int = Field(1, ge=1, description="bitflip: distinct bits flipped in each element")
    value: float | None = Field(None, description="value/stuck: this value (else log-uniform in value_range)")
    value_range: tuple[float, float] = Field((3.6e2, 1.2e8), description="value/stuck: log-uniform range")
    noise_scale: float = Field(0.1, gt=0, description="add_noise/mul_noise: standard deviation")
    duration: int = Field(1, ge=1, description="stuck: steps")
    state: Literal[tuple(STATE_KEYS)] = "first_moment"
    window: tuple[int, int] = Field((20, 120), description="injection step drawn uniformly from [lo, hi]")
    eval_every_after: int | None = Field(None, ge=1, description="held-out evaluation cadence from the injection on")

    @field_validator("fault")
    @classmethod
    def _known(cls, value, info: ValidationInfo):
        fault_model(value, info)
        return value

    @model_validator(mode="after")
    def _ranges(self):
        lo, hi = self.window
        if not 1 <= lo <= hi:
            raise ValueError("window must be lo:hi with 1 <= lo <= hi")
        if self.target == "optimizer_state" and lo < 2:
            raise ValueError("optimizer state exists only after the first update: window must start at 2 or later")
        if self.value_range[0] <= 0 or self.value_range[0] > self.value_range[1]:
            raise ValueError("value_range must be lo:hi with 0 < lo <= hi")
        if self.bit_range is not None and not 0 <= self.bit_range[0] <= self.bit_range[1]:
            raise ValueError("bit_range must be lo:hi with 0 <= lo <= hi")
        return self


def site_sizes(model: torch.nn.Module, target: str, example_input: torch.Tensor) -> dict[str, int]:
    """Number of elements of each tensor the target can hit."""
    if target != "activations":
        return {name: p.numel() for name, p in model.named_parameters()}
    sizes, handles = {}, []
    for name, module in activation_modules(model).items():
        handles.append(module.register_forward_hook(
            lambda m, i, out, name=name: sizes.__setitem__(name, out.numel()) if torch.is_tensor(out) else None))
    with torch.no_grad():
        forward(model, example_input)
    for handle in handles:
        handle.remove()
    return sizes


def draw_plan(options: FaultPlanOptions, n: int, seed: int, sizes: dict[str, int], dtype: str) -> list[dict]:
    """n concrete fault events (FaultOptions dicts) drawn from `seed`."""
    rng = np.random.default_rng(seed)
    names = sorted(sizes)
    if options.layer is not None and options.layer not in sizes:
        raise ValueError(f"layer {options.layer!r} is not a {options.target} site (allowed: {', '.join(names)})")
    return [draw_one(options, rng, sizes, names, DTYPES[dtype]) for _ in range(n)]


def draw_one(o: FaultPlanOptions, rng, sizes, names, dtype) -> dict:
    tensor = o.layer or names[int(rng.integers(len(names)))]
    numel = sizes[tensor]
    count = min(o.count, numel)
    if o.contiguous:
        start = int(rng.integers(numel - count + 1))
        indices = list(range(start, start + count))
    else:
        indices = sorted(int(i) for i in rng.choice(numel, size=count, replace=False))
    event = {"kind": "fault", "step": int(rng.integers(o.window[0], o.window[1] + 1)), "target": o.target,
             "tensor": tensor, "state": o.state, "indices": indices, "fault": o.fault, "bits": None,
             "values": None, "duration": o.duration, "eval_every_after": o.eval_every_after}
    event.update(fault_model(o.fault).draw(o, rng, len(indices), dtype))  # the model draws its own numbers
    return event


def exponent_range(dtype: str) -> tuple[int, int]:
    return EXPONENT_BITS[DTYPES[dtype]]
