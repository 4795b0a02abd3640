"""Run every benchmark and write docs/PERFORMANCE.md (what `make bench` does).

    .venv/bin/python benchmarks/run_all.py [--gpu] [--smoke] [--output docs/PERFORMANCE.md] [--only NAME ...]

Each benchmark runs in its own process, in CPU mode, with arguments that fit the whole run in
about 5 minutes on 2 cores (4.8 in the latest run); its tables (trainlab's figure, the
comparison measured in the same run, the ratio, the goal) are copied into one section per
study, with the goal from its issue and the command that reproduces it. `--gpu` adds the GPU
figures of the benchmarks that have a GPU mode. A benchmark that fails is reported with the
end of its output, and the script exits 1.

`--smoke` passes --smoke on to every benchmark: the same code at a tiny size, about 75 seconds
in all on 2 cores, to prove each still runs (tests/test_benchmarks.py does this in CI). Its
figures measure nothing, so it never writes docs/PERFORMANCE.md: the table goes to --output,
or to a new temporary folder. Paths are the script's own, so it runs from any working directory.
"""

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PERFORMANCE = ROOT / "docs" / "PERFORMANCE.md"

# (section, script, CPU arguments, GPU arguments or None, the goals from the issue)
BENCHMARKS = [
    ("Lock-step trainer (issue 2)", "bench_trainer.py", ["--steps", "400", "--repeats", "2"], None,
     "The trainer's bookkeeping (lock-step batches, metrics, evaluation) costs little over a bare torch loop "
     "doing the same work."),
    ("Fault injection and recovery (issue 3)", "bench_fault_recovery.py", ["--skip-full"], None,
     "The quick study runs in well under the legacy tool's time; the injection itself costs under 1% of the "
     "injected step."),
    ("Blob diagnostics (issue 4)", "bench_blobs.py", ["--steps", "2", "--repeats", "3"], None,
     "The per-epoch blob diagnostic (sampled pairs) costs a small fraction of an epoch of training."),
    ("Hessian eigenvalues (issue 5)", "bench_hessian.py", ["--power-budget", "1500"], None,
     "Top-5 eigenvalues of a 784-64-10 MLP to 1e-6 relative accuracy in at most 40 Hessian-vector products "
     "(power iteration: 500-2,600); one HVP at most 2x one gradient."),
    ("Many-run ensembles (issue 5)", "bench_ensemble.py", [], None,
     "1000 runs x 1111 steps of the 386-parameter MLP: at least 30x the run-steps per second of the plain "
     "one-model-at-a-time loop, and the full job in under 60 s."),
    ("Executors (issue 6)", "bench_executors.py", [], None,
     "Orchestration overhead per trial under 0.2 s; 2 local workers at least 1.7x the throughput of 1; "
     "Ray on one machine within 15% of the process pool."),
    ("DP-SGD (issue 7)", "bench_dp.py", ["--rounds", "8"], ["--device", "cuda"],
     "CPU (4-layer GPT, d 256, seq 128, batch 16): the fastest mode at most 1.15x the non-private step. "
     "H100 (GPT-2-small shape, batch 8, seq 1024): at most 1.25x time and 1.15x memory."),
]


def run(script: str, args: list[str]) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.setdefault("TRAINLAB_DATA", str(ROOT.parent / "shared" / "data"))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    return proc.returncode, proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr, \
        time.perf_counter() - started


def output_path(asked: str | None, smoke: bool) -> Path:
    """Where the table goes: docs/PERFORMANCE.md for a real run; never there for a smoke run,
    whose figures measure nothing."""
    if not smoke:
        return Path(asked) if asked else PERFORMANCE
    path = Path(asked) if asked else Path(tempfile.mkdtemp(prefix="trainlab-bench-smoke-")) / "PERFORMANCE.md"
    if path.resolve() == PERFORMANCE.resolve():
        raise SystemExit(f"--smoke: refusing to write smoke figures over {PERFORMANCE}")
    return path


def header(smoke: bool, gpu: bool, minutes: float) -> str:
    device = torch.cuda.get_device_name(0) if gpu else "CPU only"
    machine = (f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
               f"{device}; {minutes:.1f} minutes in all")
    if smoke:
        return (f"# Performance (smoke run)\n\nA smoke run of every benchmark (`benchmarks/run_all.py --smoke`) on "
                f"{dt.date.today().isoformat()}: {machine}. Each ran at a tiny size to prove it still runs; "
                "its figures measure nothing (docs/PERFORMANCE.md holds the real ones).\n\n")
    return (f"# Performance\n\nEvery figure below was measured by `make bench` (benchmarks/run_all.py) on "
            f"{dt.date.today().isoformat()}: {machine}. Each benchmark compares side "
            "by side in one run and prints ratios; rerun one with the command under its heading.\n\n")


def section(title: str, script: str, args: list[str], goal: str, code: int, output: str, seconds: float) -> str:
    command = " ".join([".venv/bin/python", f"benchmarks/{script}", *args])
    body = output.strip() if code == 0 else "**failed** (exit {}):\n\n```\n{}\n```".format(code, output.strip()[-3000:])
    return f"## {title}\n\nGoal: {goal}\n\n`{command}` ({seconds:.0f} s)\n\n{body}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="also run the GPU figures (needs CUDA)")
    parser.add_argument("--smoke", action="store_true", help="every benchmark at a tiny size (tests); never "
                                                                 "writes docs/PERFORMANCE.md")
    parser.add_argument("--output", help=f"where the table goes (default: {PERFORMANCE.relative_to(ROOT)}; with "
                                         "--smoke, a new temporary folder)")
    parser.add_argument("--only", nargs="+", metavar="SCRIPT", help="run only these scripts (e.g. bench_dp.py)")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        print("--gpu: no CUDA device here", file=sys.stderr)
        return 2
    output = output_path(args.output, args.smoke)
    smoke = ["--smoke"] if args.smoke else []
    started = time.perf_counter()
    parts, failed = [], 0
    for title, script, cpu_args, gpu_args, goal in BENCHMARKS:
        if args.only and script not in args.only:
            continue
        runs = [(title, cpu_args + smoke)] + ([(f"{title}, GPU", gpu_args + smoke)] if args.gpu and gpu_args else [])
        for name, extra in runs:
            print(f"{name}: {script} {' '.join(extra)}", file=sys.stderr, flush=True)
            code, text, seconds = run(script, extra)
            failed += code != 0
            print(f"  {'done' if code == 0 else 'FAILED'} in {seconds:.0f} s", file=sys.stderr, flush=True)
            parts.append(section(name, script, extra, goal, code, text, seconds))
    total = time.perf_counter() - started
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(header(args.smoke, args.gpu, total / 60) + "\n".join(parts), encoding="utf-8")
    print(f"wrote {output} ({total / 60:.1f} min)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
