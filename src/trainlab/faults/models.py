"""Fault models: what a fault does to the selected elements of a tensor.

Every model is a pure function of the old values and numbers fixed up front (bits to flip,
replacement values, noise draws), so every arm gets exactly the same fault and a replay
gets it again.
"""

import torch

INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
            torch.float64: torch.int64}
WIDTH = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}
# (first, last) exponent bit, counting from the least significant bit
EXPONENT_BITS = {torch.float16: (10, 14), torch.bfloat16: (7, 14), torch.float32: (23, 30), torch.float64: (52, 62)}
FAULTS = ("bitflip", "value", "zero", "sign_flip", "add_noise", "mul_noise", "stuck")


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
    """A fault model with its numbers turned into tensors once, for one dtype and device,
    so applying it inside a training step costs a few small kernels."""

    def __init__(self, fault: str, bits, values, dtype: torch.dtype, device):
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; allowed: {', '.join(FAULTS)}")
        self.fault = fault
        self.masks = bit_masks(bits, dtype, device) if fault == "bitflip" else None
        self.values = torch.tensor(values, dtype=dtype, device=device) if values is not None else None

    def __call__(self, old: torch.Tensor) -> torch.Tensor:
        if self.fault == "bitflip":
            return xor_bits(old, self.masks)
        if self.fault in ("value", "stuck"):
            return self.values.clone()
        if self.fault == "zero":
            return torch.zeros_like(old)
        if self.fault == "sign_flip":
            return -old
        if self.fault == "add_noise":
            return old + self.values
        return old * (1 + self.values)  # mul_noise
