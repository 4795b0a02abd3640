"""A Triton kernel for the fused mode: per-sample squared norms of a Linear layer's weight
gradient, ||G_i^T A_i||_F^2, without writing the per-sample gradient anywhere.

Each program owns one sample and one (out-block, in-block) tile of its [out, in] gradient:
it accumulates the tile over T in registers (tl.dot of G^T and A chunks), squares and sums
it, and writes one partial sum. The partial sums are then added in a fixed order by torch,
so the result is deterministic (atomics would add them in whatever order programs finish).
Inputs may be float32, bfloat16 or float16; tiles are multiplied in float32 precision on
tensor cores (see `precision`) and accumulated in float32, as the engine's norms are float32.

Used on CUDA when Triton is installed; elsewhere the PyTorch path of `rules.linear.LinearRule`
runs. `TRITON_INTERPRET=1` runs the same kernel on CPU tensors (slowly), which is how the
tests check it on machines without a GPU.
"""

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the PyTorch path is used
    triton = None

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def available(a: torch.Tensor) -> bool:
    """Whether the kernel can serve these activations: Triton installed, a GPU with TF32 tensor
    cores (compute capability 8.0 or later) or Triton's interpreter, a supported dtype."""
    if triton is None or a.dtype not in KERNEL_DTYPES:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return a.is_cuda and torch.cuda.get_device_capability(a.device) >= (8, 0)


if triton is not None:
    @triton.jit
    def _weight_norm_tiles(a_ptr, g_ptr, out_ptr, T, n_in, n_out,
                           stride_ab, stride_at, stride_ai, stride_gb, stride_gt, stride_go,
                           BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr,
                           PRECISION: tl.constexpr):
        sample = tl.program_id(0).to(tl.int64)  # sample * stride passes 2^31 elements on large batches
        block_o = tl.program_id(1)
        block_i = tl.program_id(2)
        offs_o = block_o * BLOCK_O + tl.arange(0, BLOCK_O)
        offs_i = block_i * BLOCK_I + tl.arange(0, BLOCK_I)
        acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
        for start in range(0, T, BLOCK_T):
            offs_t = start + tl.arange(0, BLOCK_T)
            in_t = offs_t[:, None] < T
            g = tl.load(g_ptr + sample * stride_gb + offs_t[:, None] * stride_gt + offs_o[None, :] * stride_go,
                        mask=in_t & (offs_o[None, :] < n_out), other=0.0)
            a = tl.load(a_ptr + sample * stride_ab + offs_t[:, None] * stride_at + offs_i[None, :] * stride_ai,
                        mask=in_t & (offs_i[None, :] < n_in), other=0.0)
            # float32 tiles: bf16 / fp16 values are exact in TF32, so their products stay exact
            acc += tl.dot(tl.trans(g.to(tl.float32)), a.to(tl.float32), input_precision=PRECISION)
        tiles_per_sample = tl.num_programs(1) * tl.num_programs(2)
        tl.store(out_ptr + sample * tiles_per_sample + block_o * tl.num_programs(2) + block_i, tl.sum(acc * acc))


def precision(dtype: torch.dtype) -> str:
    """float32 inputs: float32 accuracy on tensor cores (three TF32 products; plain TF32 would
    leave the norms about 1e-3 off, and a clip threshold must not be exceeded). bf16 / fp16
    inputs have at most TF32's 10 mantissa bits, so one TF32 product is exact."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def weight_norm_sq(a: torch.Tensor, g: torch.Tensor, block_t: int = 32, block: int = 64) -> torch.Tensor:
    """Per-sample ||G_i^T A_i||_F^2 for a: [B, T, in], g: [B, T, out] -> [B] float32."""
    B, T, n_in = a.shape
    n_out = g.shape[2]
    grid = (B, triton.cdiv(n_out, block), triton.cdiv(n_in, block))
    partial = torch.empty(B, grid[1] * grid[2], dtype=torch.float32, device=a.device)
    _weight_norm_tiles[grid](a, g, partial, T, n_in, n_out, *a.stride(), *g.stride(),
                             BLOCK_T=block_t, BLOCK_I=block, BLOCK_O=block, PRECISION=precision(a.dtype))
    return partial.sum(1)
