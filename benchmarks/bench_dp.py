"""DP-SGD: step time and peak memory of every mode against a non-private step and Opacus.

    .venv/bin/python benchmarks/bench_dp.py            # CPU: 4-layer GPT, d 256, seq 128, batch 16
    .venv/bin/python benchmarks/bench_dp.py --device cuda   # GPT-2-small shape, batch 8, seq 1024
    .venv/bin/python benchmarks/bench_dp.py --smoke         # gpt-256, batch 2, seq 16, bk and Opacus: seconds

Goals (from the issue): on CPU the fastest mode at most 1.15x the non-private step; on an
H100 at most 1.25x time and 1.15x memory on the GPT-2-small shape (Opacus hooks measured at
1.56x / 1.08x there, Opacus ghost 2.75x / 1.64x). Every mode and Opacus run in one session,
timed round-robin (trainlab.recipes.dp_profile), so the ratios share one machine state.
`--smoke` (tests) profiles one trainlab mode and Opacus hooks (when installed) on a tiny batch:
peak memory takes a fresh process per mode, seconds each, so it does not profile every mode.
"""

import argparse
import importlib.util

import torch

from trainlab.recipes.dp_profile import breakdown, markdown, profile

from common import add_smoke_flag

MODES = ["no_dp", "bk", "flash", "fused", "ghost", "per_sample", "opacus_hooks", "opacus_ghost"]
# gpt-256 rather than gpt-tiny: Opacus cannot take gpt-tiny's bias-free LayerNorm
SMOKE_SHAPE = dict(models=["gpt-256"], batches=[2], seqs=[16])
SMOKE_MODES = ["bk", *(["opacus_hooks"] if importlib.util.find_spec("opacus") else [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-memory", action="store_true", help="time only")
    add_smoke_flag(parser)
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # the reference: fp32 with TF32
        torch.backends.cudnn.allow_tf32 = True
    shape = dict(models=["gpt2-small"], batches=[8], seqs=[1024]) if gpu else dict(models=["gpt-256"], batches=[16],
                                                                                      seqs=[128])
    modes = SMOKE_MODES if args.smoke else MODES
    if args.smoke:  # on either device
        shape, args.rounds = SMOKE_SHAPE, 1
    rows = profile(**shape, modes=modes, device=args.device, rounds=args.rounds, memory=not args.no_memory)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads\n")
    print(markdown(rows))
    trainlab = [r for r in rows if r["mode"] in ("bk", "flash", "fused", "ghost", "per_sample") and r["time_ratio"]]
    if trainlab:
        best = min(trainlab, key=lambda r: r["time_ratio"])
        goal = "1.25x time, 1.15x memory" if gpu else "1.15x time"
        memory = f", {best['memory_ratio']:.2f}x memory" if best.get("memory_ratio") else ""
        print(f"fastest trainlab mode: {best['mode']} at {best['time_ratio']:.2f}x the non-private step{memory} "
              f"(goal: at most {goal})")
    print_breakdown(dict(model=shape["models"][0], batch=shape["batches"][0], seq=shape["seqs"][0], device=args.device,
                         dtype="float32"), args.rounds)


def print_breakdown(shape: dict, rounds: int) -> None:
    """Where bk's time goes: its pieces beside a non-private forward and backward."""
    parts = breakdown(shape, rounds)
    step = parts["forward"] + parts["backward, all gradients (non-private)"]
    print(f"\nwhere the time of a bk step goes ({shape['model']}, batch {shape['batch']}, seq {shape['seq']}; "
          f"medians of {rounds}):\n")
    print("| piece | ms | share of a non-private forward + backward |")
    print("|---|---|---|")
    for name, ms in parts.items():
        print(f"| {name} | {ms:.1f} | {ms / step:.0%} |")
    extra = (parts["backward to the layer outputs (bk)"] + parts["per-sample norms"] + parts["clipped sums"]
             + parts["noise"] - parts["backward, all gradients (non-private)"])
    print(f"\nbk's extra work: {extra:.1f} ms = {extra / step:.0%} of the non-private forward + backward "
          "(the norms, the noise, and the clipped sums beyond the weight gradients they replace)")


if __name__ == "__main__":
    main()
