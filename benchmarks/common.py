"""What the benchmark scripts share: the --smoke switch, and figures that never print as a false 0.

Each bench_*.py takes --smoke: the very same code at a tiny size, in seconds, so that
tests/test_benchmarks.py can run every script on every change and a broken API call shows up
there rather than in the next `make bench`. Smoke figures measure nothing.
"""

SMOKE_HELP = "tiny sizes, the same code paths, seconds (tests/test_benchmarks.py); overrides the sizes given"


def add_smoke_flag(parser) -> None:
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def fixed(value: float, decimals: int) -> str:
    """`value` with `decimals` places, as real runs print it; two significant digits instead
    when those places would show a measured time as 0 (smoke runs time milliseconds)."""
    text = f"{value:.{decimals}f}"
    return f"{value:.2g}" if value != 0 and float(text) == 0 else text
