"""The benchmarks keep running: every benchmarks/bench_*.py at its smoke size, on every change.

One `run_all.py --smoke` (started from a folder other than the checkout) runs each script in
its own process (this interpreter, cwd = the repository root, TRAINLAB_DATA set), as `make bench`
does; each script's section of the table it writes is then checked on its own. Only the form
of the output is checked: exit 0, the expected rows and columns, every time and ratio a
finite positive number. Smoke timings measure nothing, so no test compares one with a goal.
A new bench_*.py is picked up by the glob and fails here until EXPECTED says what it prints.
"""

import hashlib
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PERFORMANCE = ROOT / "docs" / "PERFORMANCE.md"
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("bench_*.py"))
HAS_RAY = importlib.util.find_spec("ray") is not None
HAS_OPACUS = importlib.util.find_spec("opacus") is not None


def table(columns, rows, positive=(), non_negative=(), finite_rows=()):
    """What one markdown table must hold: its header, the first cell of each row (a prefix),
    the columns whose cells are times or ratios (> 0), those that may be 0 (an error, a
    memory growth), and rows that are differences of two times (any sign, finite)."""
    return dict(columns=columns, rows=rows, positive=positive, non_negative=non_negative, finite_rows=finite_rows)


EXPECTED = {
    "bench_trainer.py": [table(
        ["dtype", "hidden", "plain loop (us/arm-step)", "trainlab (us/arm-step)", "ratio trainlab/plain"],
        ["float32", "float64", "float32"],
        positive=["plain loop (us/arm-step)", "trainlab (us/arm-step)", "ratio trainlab/plain"])],
    "bench_fault_recovery.py": [
        table(["study (mnist-cnn, CPU)", "trainlab wall (s)", "goal (s)", "trainlab / goal", "legacy (quoted)"],
              ["smoke: 1 experiment"], positive=["trainlab wall (s)", "goal (s)", "trainlab / goal"]),
        table(["injection into (mnist-cnn, 4 arms)", "fault event (us)", "step's training (ms)", "event / step"],
              ["weights", "gradients", "optimizer_state", "activations"],
              positive=["fault event (us)", "step's training (ms)", "event / step"])],
    "bench_blobs.py": [table(
        ["measurement", "seconds", "share of one epoch"],
        ["one training epoch", "blob diagnostics, 500 sampled pairs", "blob diagnostics, all 2,048 pairs"],
        positive=["seconds", "share of one epoch"])],
    "bench_hessian.py": [table(
        ["state", "method", "HVPs", "max relative error of top 5", "seconds"],
        ["initialisation"] * 3 + ["trained 30 steps"] * 3,
        positive=["HVPs", "seconds"], non_negative=["max relative error of top 5"])],
    "bench_ensemble.py": [table(
        ["method", "runs x steps", "seconds", "run-steps / s", "speed-up"],
        ["plain loop, one model at a time", "trainlab batched (median", "trainlab batched, full job"],
        positive=["seconds", "run-steps / s", "speed-up"])],
    "bench_executors.py": [
        table(["measurement", "seconds", "goal"],
              ["no-op trial run directly", "no-op trial through a study", "orchestration overhead per trial"],
              positive=["seconds"], finite_rows=["orchestration overhead per trial"]),
        table(["2 CPU-bound trials", "seconds", "trials / s", "vs 1 worker"],
              ["local pool, 1 worker", "local pool, 2 workers", "inline, this process"]
              + (["local Ray, 2 workers"] if HAS_RAY else []),
              positive=["seconds", "trials / s", "vs 1 worker"])],
    "bench_dp.py": [
        table(["model", "params", "batch", "seq", "mode", "step (ms)", "vs non_dp", "peak memory (MiB)", "vs non_dp"],
              ["gpt-256"] * (3 if HAS_OPACUS else 2),
              positive=["params", "step (ms)", "vs non_dp"], non_negative=["peak memory (MiB)"]),
        table(["piece", "ms", "share of a non-private forward + backward"],
              ["forward", "backward, all gradients", "backward to the layer outputs", "per-sample norms",
               "clipped sums", "noise"],
              positive=["ms", "share of a non-private forward + backward"])],
}

# figures printed in sentences below the tables: (script, pattern whose groups are times or ratios > 0)
SENTENCES = [
    ("bench_hessian.py", r"one HVP ([\d.e-]+) ms vs one gradient ([\d.e-]+) ms: ratio ([\d.e-]+)"),
    ("bench_dp.py", r"fastest trainlab mode: \w+ at ([\d.e-]+)x the non-private step, ([\d.e-]+)x memory"),
] + ([("bench_executors.py", r"Starting the local Ray instance took ([\d.e-]+) s more")] if HAS_RAY else [])

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?|-?\.\d+", re.I)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> dict:
    """One `run_all.py --smoke`, from a folder outside the checkout: (exit code, stderr, the
    table it wrote, and the sha256 of docs/PERFORMANCE.md before and after)."""
    folder = tmp_path_factory.mktemp("bench")
    output = folder / "smoke" / "PERFORMANCE.md"
    before = digest(PERFORMANCE)
    env = dict(os.environ)  # TRAINLAB_DATA included: conftest sets it
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "run_all.py"), "--smoke", "--output", str(output)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    return {"code": proc.returncode, "stderr": proc.stderr, "table": output.read_text() if output.exists() else "",
            "before": before, "after": digest(PERFORMANCE)}


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def sections(text: str) -> dict[str, str]:
    """run_all's sections by the script their command runs: {script: body after the command}."""
    found = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        match = re.search(r"^`\S+ benchmarks/(bench_\w+\.py)[^`]*` \(\d+ s\)$", part, re.M)
        if match:
            found[match.group(1)] = part[match.end():]
    return found


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table in `text`: (header cells, rows of cells)."""
    found, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            found.append((block[0], block[2:]))
            block = []
    return found


def number(cell: str) -> float:
    """The figure a cell starts with ('1.38x', '0.441%', '57,341', '3.32M', '1.2e-08')."""
    match = NUMBER.match(cell)
    assert match, f"{cell!r} is not a number"
    return float(match.group().replace(",", ""))


def check_table(script: str, header: list[str], rows: list[list[str]], expected: dict) -> None:
    assert header == expected["columns"], f"{script}: columns {header}"
    assert len(rows) == len(expected["rows"]), f"{script}: rows {rows}"
    for row, start in zip(rows, expected["rows"]):
        assert len(row) == len(header), f"{script}: row {row} does not fit {header}"
        assert row[0].startswith(start), f"{script}: row {row[0]!r}, expected {start!r}"
        difference = any(row[0].startswith(name) for name in expected["finite_rows"])
        for column, cell in zip(header, row):
            if column in expected["positive"] or column in expected["non_negative"]:
                if cell == "-" and column == "speed-up":  # the full job has no side-by-side figure
                    continue
                value = number(cell)
                assert math.isfinite(value), f"{script}: {column} of {row[0]!r} is {cell!r}"
                if difference:
                    continue
                least_ok = value >= 0 if column in expected["non_negative"] else value > 0
                assert least_ok, f"{script}: {column} of {row[0]!r} is {cell!r}"


def test_every_script_is_known():
    """A new script is run by run_all.py (so by `make bench`) and described here."""
    import runpy

    listed = [entry[1] for entry in runpy.run_path(str(BENCHMARKS / "run_all.py"))["BENCHMARKS"]]
    assert sorted(listed) == SCRIPTS, "run_all.BENCHMARKS must list every benchmarks/bench_*.py"
    assert sorted(EXPECTED) == SCRIPTS, "describe what each benchmarks/bench_*.py prints in EXPECTED"


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_at_smoke_size(smoke_run, script):
    body = sections(smoke_run["table"]).get(script)
    assert body is not None, f"run_all.py --smoke wrote no section for {script}:\n{smoke_run['stderr'][-3000:]}"
    assert not body.lstrip().startswith("**failed**"), f"{script} failed at smoke size:\n{body}"
    assert not re.search(r"\b(nan|inf|failed)\b", body, re.I), f"{script} printed a broken figure:\n{body}"
    found = tables(body)
    expected = EXPECTED.get(script)
    assert expected is not None, f"describe what {script} prints in EXPECTED"
    assert len(found) == len(expected), f"{script}: {len(found)} tables, expected {len(expected)}:\n{body}"
    for (header, rows), want in zip(found, expected):
        check_table(script, header, rows, want)
    for name, pattern in SENTENCES:
        if name == script:
            match = re.search(pattern, body)
            assert match, f"{script}: no line matching {pattern!r}:\n{body}"
            assert all(math.isfinite(float(g)) and float(g) > 0 for g in match.groups()), match.group()


def test_run_all_smoke_names_every_benchmark_and_leaves_the_real_table(smoke_run):
    assert smoke_run["code"] == 0, smoke_run["stderr"][-3000:]
    assert smoke_run["table"].startswith("# Performance (smoke run)")
    assert sorted(sections(smoke_run["table"])) == SCRIPTS
    assert smoke_run["after"] == smoke_run["before"], "a smoke run rewrote docs/PERFORMANCE.md"


def test_run_all_smoke_refuses_to_write_the_real_table(tmp_path):
    before = digest(PERFORMANCE)
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "run_all.py"), "--smoke", "--output", str(PERFORMANCE)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "refusing" in proc.stderr
    assert digest(PERFORMANCE) == before
