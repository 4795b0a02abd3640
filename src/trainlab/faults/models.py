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
    if values.dtype not in INT_VIEW:
        raise ValueError(f"bit flips need a float16, bfloat16, float32 or float64 tensor, not {values.dtype}")
    width = WIDTH[values.dtype]
    ints = values.detach().contiguous().view(INT_VIEW[values.dtype]).clone()
    masks = torch.tensor([bit_mask(b, width) for b in bits], dtype=ints.dtype, device=ints.device)
    return torch.bitwise_xor(ints, masks).view(values.dtype)


def apply_fault(old: torch.Tensor, fault: str, bits=None, values=None) -> torch.Tensor:
    """New values for the selected elements `old` (a 1-D tensor)."""
    if fault == "bitflip":
        return flip_bits(old, bits)
    if fault in ("value", "stuck"):
        return torch.tensor(values, dtype=old.dtype, device=old.device)
    if fault == "zero":
        return torch.zeros_like(old)
    if fault == "sign_flip":
        return -old
    draws = torch.tensor(values, dtype=old.dtype, device=old.device)
    if fault == "add_noise":
        return old + draws
    if fault == "mul_noise":
        return old * (1 + draws)
    raise ValueError(f"unknown fault {fault!r}; allowed: {', '.join(FAULTS)}")
