"""Fault models: what a fault does to the elements it hits, registered as plugins.

A fault model is a small class that owns everything about one kind of fault:

    needs     what a concrete fault event carries per element: "bits", "values" or None
    lasts     True when the fault holds for `duration` steps (stuck), else it strikes once
    draw      the per-element numbers of one event, drawn up front from the plan's generator
    prepare   those numbers as tensors, once per dtype and device
    apply     old values -> new values (a pure function of the old values and the prepared numbers)

Because every number is fixed before training, every arm gets exactly the same fault and a
replay gets it again. A fault model of your own:

    from trainlab.faults import FaultModel
    from trainlab.plugin import register_fault_model

    @register_fault_model("halve")
    class Halve(FaultModel):
        doc = "halve the hit elements"
        def apply(self, old, prepared):
            return old / 2
"""

import math

import numpy as np
import torch

from ..plugin import register_fault_model

INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
            torch.float64: torch.int64}
WIDTH = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}
# (first, last) exponent bit, counting from the least significant bit
EXPONENT_BITS = {torch.float16: (10, 14), torch.bfloat16: (7, 14), torch.float32: (23, 30), torch.float64: (52, 62)}


class FaultModel:
    needs: str | None = None  # "bits" or "values": what each hit element carries in the event
    lasts = False  # holds for the event's `duration` steps
    doc = ""

    def draw(self, plan, rng: np.random.Generator, count: int, dtype: torch.dtype) -> dict:
        """Per-element numbers of one event ({'bits': ...} / {'values': ...}); `plan` holds the
        plan options (value_range, noise_scale, bit, bit_range, bits_per_element)."""
        return {}

    def prepare(self, event: dict, dtype: torch.dtype, device):
        """The event's numbers as tensors for `apply` (once per dtype and device)."""
        return torch.tensor(event["values"], dtype=dtype, device=device) if self.needs == "values" else None

    def apply(self, old: torch.Tensor, prepared) -> torch.Tensor:
        raise NotImplementedError


@register_fault_model("bitflip")
class BitFlip(FaultModel):
    needs, doc = "bits", "flip bits of the IEEE representation (bit, bit_range or any bit)"

    def draw(self, plan, rng, count, dtype):
        return {"bits": [draw_bits(plan, rng, dtype) for _ in range(count)]}

    def prepare(self, event, dtype, device):
        return bit_masks(event["bits"], dtype, device)

    def apply(self, old, prepared):
        return xor_bits(old, prepared)


@register_fault_model("value")
class SetValue(FaultModel):
    needs, doc = "values", "replace with a value (value, or log-uniform in value_range)"

    def draw(self, plan, rng, count, dtype):
        lo, hi = plan.value_range
        return {"values": [plan.value if plan.value is not None else float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
                           for _ in range(count)]}

    def apply(self, old, prepared):
        return prepared.clone()


@register_fault_model("stuck")
class Stuck(SetValue):
    lasts, doc = True, "hold at a value for `duration` steps"


@register_fault_model("zero")
class Zero(FaultModel):
    doc = "set to zero"

    def apply(self, old, prepared):
        return torch.zeros_like(old)


@register_fault_model("sign_flip")
class SignFlip(FaultModel):
    doc = "negate"

    def apply(self, old, prepared):
        return -old


@register_fault_model("add_noise")
class AddNoise(FaultModel):
    needs, doc = "values", "add Gaussian noise of std noise_scale"

    def draw(self, plan, rng, count, dtype):
        return {"values": [float(v) for v in rng.normal(0.0, plan.noise_scale, size=count)]}

    def apply(self, old, prepared):
        return old + prepared


@register_fault_model("mul_noise")
class MulNoise(AddNoise):
    doc = "multiply by 1 + Gaussian noise of std noise_scale"

    def apply(self, old, prepared):
        return old * (1 + prepared)


# ---------------------------------------------------------------- bits


def draw_bits(plan, rng, dtype) -> list[int]:
    if plan.bit is not None:
        if plan.bit >= WIDTH[dtype]:
            raise ValueError(f"bit {plan.bit} does not exist in {dtype} ({WIDTH[dtype]} bits)")
        return [plan.bit]
    lo, hi = plan.bit_range if plan.bit_range is not None else (0, WIDTH[dtype] - 1)
    hi = min(hi, WIDTH[dtype] - 1)
    k = min(plan.bits_per_element, hi - lo + 1)
    return sorted(int(b) for b in rng.choice(np.arange(lo, hi + 1), size=k, replace=False))


def bit_mask(bits: list[int], width: int) -> int:
    """XOR mask with the given bits set, as the signed integer of that width."""
    mask = 0
    for bit in bits:
        if not 0 <= bit < width:
            raise ValueError(f"bit {bit} is outside 0..{width - 1}")
        mask ^= 1 << bit
    return mask - (1 << width) if mask >= 1 << (width - 1) else mask


def flip_bits(values: torch.Tensor, bits: list[list[int]]) -> torch.Tensor:
    """Flip bits[i] of the IEEE representation of values[i] (float16/bfloat16/float32/float64)."""
    return xor_bits(values, bit_masks(bits, values.dtype, values.device))


def bit_masks(bits: list[list[int]], dtype: torch.dtype, device=None) -> torch.Tensor:
    """The XOR masks of `bits`, as integers of the same width as `dtype`."""
    if dtype not in INT_VIEW:
        raise ValueError(f"bit flips need a float16, bfloat16, float32 or float64 tensor, not {dtype}")
    return torch.tensor([bit_mask(b, WIDTH[dtype]) for b in bits], dtype=INT_VIEW[dtype], device=device)


def xor_bits(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    ints = values.detach().contiguous().view(masks.dtype)
    return torch.bitwise_xor(ints, masks).view(values.dtype)


class Fault:
    """One fault event's model with its numbers turned into tensors once, for one dtype and
    device, so applying it inside a training step costs a few small kernels."""

    def __init__(self, model: FaultModel, event: dict, dtype: torch.dtype, device):
        self.model = model
        self.prepared = model.prepare(event, dtype, device)

    def __call__(self, old: torch.Tensor) -> torch.Tensor:
        return self.model.apply(old, self.prepared)
