"""Batch-size profiler: train one spec at several batch sizes, each in a fresh process, and
recommend the size with the best throughput that fits a memory budget.

Memory is what training adds: on CUDA the allocator's peak; on CPU the peak resident set
size minus the resident size after start-up (imports, data). A size whose peak exceeds the
budget, whose allocation fails, or whose process is killed, is an OOM row, not a crash. On
CPU the child's address space is also capped near the budget, so a runaway size fails
inside its own process instead of exhausting the machine.

    trainlab profile-batch-size SPEC --batch-sizes 2048 5120 10240 20480 --epochs 5 --output report.md
"""

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..engine import Trial
from ..errors import UserError
from ..report.markdown import markdown_table
from ..plugin import register_command
from ..spec import load_spec

try:
    import resource  # POSIX only: the CPU memory cap
except ImportError:
    resource = None
from .flags import Command, add_common, add_plugins, add_sets

log = logging.getLogger(__name__)

SLACK = 512 * 2**20  # address-space head-room above the budget for allocator arenas and thread stacks


@dataclass
class ProfileRecord:
    batch_size: int
    status: str  # "ok" or "oom" or "error"
    seconds_per_epoch: float | None = None
    samples_per_second: float | None = None
    peak_memory_bytes: int | None = None
    final_train_loss: float | None = None
    final_test_loss: float | None = None
    steps: int | None = None
    message: str = ""


def parse_size(text: str) -> int:
    """'512MB', '4GB', '1.5G', '800000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise UserError(f"--memory-budget {text!r}: expected a size such as 512MB or 4GB")
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " "))


def device_memory(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def profile_batch_sizes(spec: dict, batch_sizes: list[int], epochs: float = 1, memory_budget: int | None = None,
                        budget_fraction: float = 0.8, quiet: bool = False) -> list[ProfileRecord]:
    """Profile a resolved spec at each batch size, each in a fresh subprocess."""
    check_platform()
    budget = memory_budget or int(budget_fraction * device_memory(spec["plan"]["device"]))
    records = []
    for size in batch_sizes:
        job = {"spec": spec, "batch_size": size, "epochs": epochs, "budget": budget}
        record = run_child(job)
        records.append(record)
        if not quiet:
            log.info(f"batch {size}: {record.status}" + (f", {record.samples_per_second:,.0f} samples/s, peak "
                  f"{record.peak_memory_bytes / 2**20:,.0f} MiB" if record.status == "ok" else f" ({record.message})"))
    return records


def run_child(job: dict) -> ProfileRecord:
    proc = subprocess.run([sys.executable, "-m", "trainlab.recipes.batch_size"], input=json.dumps(job), capture_output=True,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return ProfileRecord(**json.loads(lines[-1]))
    if proc.returncode < 0 or "MemoryError" in proc.stderr or "can't allocate memory" in proc.stderr:
        return ProfileRecord(job["batch_size"], "oom", message=f"process ended by signal {-proc.returncode}"
                             if proc.returncode < 0 else "allocation failed")
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return ProfileRecord(job["batch_size"], "error", message=tail[:200])


def check_platform() -> None:
    """The profiler measures through /proc and caps memory with setrlimit: where either is
    missing, it says so instead of reporting numbers it could not measure."""
    missing = [what for what, ok in (("the resource module (setrlimit)", resource is not None),
                                     ("/proc/self/statm", os.path.exists("/proc/self/statm"))) if not ok]
    if missing:
        raise UserError(f"profile-batch-size needs {' and '.join(missing)}, which this platform ({sys.platform}) "
                        "lacks: profile on Linux")


def child(job: dict) -> ProfileRecord:
    """Inside the fresh process: one batch size."""
    spec = load_spec(job["spec"], {"plan.batch_size": job["batch_size"], "plan.epochs": job["epochs"],
                                   "plan.steps": None})
    size, budget, device = job["batch_size"], job["budget"], spec["plan"]["device"]
    trial = Trial(spec)
    watch = PeakRSS()
    if not device.startswith("cuda"):
        resource.setrlimit(resource.RLIMIT_AS, (vm_size() + budget + SLACK, resource.RLIM_INFINITY))
    else:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        summary = trial.run()
    except (MemoryError, torch.OutOfMemoryError) as exc:
        return ProfileRecord(size, "oom", message=f"allocation failed: {str(exc).splitlines()[0][:120]}")
    except RuntimeError as exc:
        if "allocate" in str(exc) or "out of memory" in str(exc):
            return ProfileRecord(size, "oom", message=f"allocation failed: {str(exc).splitlines()[0][:120]}")
        raise
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else watch.growth()
    arm = next(iter(summary["arms"].values()))
    epochs = trial.total_steps / trial.stream.steps_per_epoch
    record = ProfileRecord(size, "ok", elapsed / epochs, trial.total_steps * size / elapsed, peak,
                           arm["final_train_loss"], arm["final_test_loss"], trial.total_steps)
    if peak > budget:
        record.status, record.message = "oom", f"peak {peak / 2**20:,.0f} MiB exceeds the budget"
    return record


def statm(column: int) -> int:
    """A field of /proc/self/statm in bytes: 0 = virtual size, 1 = resident size."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[column]) * os.sysconf("SC_PAGE_SIZE")


def rss_now() -> int:
    return statm(1)


class PeakRSS:
    """Peak resident memory added from now on. Linux resets the high-water mark when "5" is
    written to /proc/self/clear_refs, so VmHWM afterwards is the peak of this stretch alone
    (the lifetime peak of getrusage would include start-up). Where the reset is refused, a
    thread samples the resident size every 2 ms instead."""

    def __init__(self):
        self.baseline = rss_now()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.sampler = None
        except OSError:
            self.highest = self.baseline
            self.stop = threading.Event()
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.002):
            self.highest = max(self.highest, rss_now())

    def growth(self) -> int:
        if self.sampler is not None:
            self.stop.set()
            self.sampler.join()
            return max(0, self.highest - self.baseline)
        with open("/proc/self/status") as fh:
            hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
        return max(0, hwm - self.baseline)


def vm_size() -> int:
    return statm(0)


# ---------------------------------------------------------------- report


def recommend(records: list[ProfileRecord], budget: int) -> tuple[ProfileRecord | None, str]:
    fitting = [r for r in records if r.status == "ok"]
    if not fitting:
        return None, "no batch size trained within the memory budget; try smaller sizes or a larger budget"
    best = max(fitting, key=lambda r: r.samples_per_second)
    reasons = [f"batch {best.batch_size} has the highest throughput within the budget of {budget / 2**20:,.0f} MiB "
               f"({best.samples_per_second:,.0f} samples/s, peak {best.peak_memory_bytes / 2**20:,.0f} MiB)"]
    for r in fitting:
        if r is not best:
            reasons.append(f"batch {r.batch_size}: {r.samples_per_second / best.samples_per_second:.2f}x its throughput")
    excluded = [r for r in records if r.status != "ok"]
    if excluded:
        reasons.append("excluded: " + ", ".join(f"batch {r.batch_size} ({r.status}: {r.message})" for r in excluded))
    larger_loss = [r for r in fitting if r.final_test_loss is not None and best.final_test_loss is not None
                   and r.final_test_loss < best.final_test_loss]
    if larger_loss:
        r = min(larger_loss, key=lambda r: r.final_test_loss)
        reasons.append(f"note: batch {r.batch_size} reached a lower held-out loss ({r.final_test_loss:.4g} vs "
                       f"{best.final_test_loss:.4g}) in the same number of epochs")
    return best, "; ".join(reasons)


def markdown(records: list[ProfileRecord], budget: int, spec: dict, epochs: float) -> str:
    best, reasoning = recommend(records, budget)
    rows = [[r.batch_size, r.status, r.seconds_per_epoch, r.samples_per_second,
             None if r.peak_memory_bytes is None else r.peak_memory_bytes / 2**20, r.final_train_loss,
             r.final_test_loss, r.message or ""] for r in records]
    memory = "CUDA allocator peak" if spec["plan"]["device"].startswith("cuda") else "peak RSS growth"
    return "\n".join([
        f"# Batch-size profile: {spec['name']}", "",
        f"- task `{spec['task']['name']}`, arm `{spec['arms'][0]['name']}` ({spec['arms'][0]['optimizer']}), "
        f"{epochs:g} epoch(s) per size, {spec['plan']['dtype']} on {spec['plan']['device']}, each size in a fresh process",
        f"- memory budget {budget / 2**20:,.0f} MiB ({memory})", "",
        markdown_table(["batch", "status", "s / epoch", "samples / s", "peak MiB", "final train loss",
                        "final held-out loss", "note"], rows), "",
        f"**Recommendation:** {'batch ' + str(best.batch_size) if best else 'none'}. {reasoning}.", ""])


def write_report(records, budget, spec, epochs, output: Path) -> Path:
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(markdown(records, budget, spec, epochs))
        output.with_suffix(".json").write_text(json.dumps([asdict(r) for r in records], indent=2))
    except OSError as exc:
        raise UserError(f"--output {str(output)!r}: cannot write the report ({exc.strerror})") from None
    return output


if __name__ == "__main__":
    record = child(json.loads(sys.stdin.read()))
    print(json.dumps(asdict(record)))


# ---------------------------------------------------------------- the command


def arguments(parser) -> None:
    parser.add_argument("spec", help="YAML or JSON spec file, or a preset name")
    parser.add_argument("--batch-sizes", type=int, nargs="+", required=True, metavar="B")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--memory-budget", metavar="SIZE", help="e.g. 4GB (default: --budget-fraction of the device)")
    parser.add_argument("--budget-fraction", type=float, default=0.8)
    parser.add_argument("--output", default="batch_size_profile.md", metavar="FILE")
    add_sets(parser)
    add_plugins(parser)
    add_common(parser)


def run_command(args) -> int:
    if any(b <= 0 for b in args.batch_sizes):
        raise UserError("--batch-sizes: every size must be a positive integer")
    if args.epochs <= 0:
        raise UserError("--epochs: must be positive")
    if not 0 < args.budget_fraction <= 1:
        raise UserError("--budget-fraction: must be in (0, 1]")
    spec = load_spec(args.spec, args.sets, plugins=args.plugins)
    budget = parse_size(args.memory_budget) if args.memory_budget else int(
        args.budget_fraction * device_memory(spec["plan"]["device"]))
    records = profile_batch_sizes(spec, args.batch_sizes, args.epochs, budget, quiet=args.quiet)
    output = write_report(records, budget, spec, args.epochs, args.output)
    print(output.read_text())
    return 0


register_command("profile-batch-size", Command("time and memory of a spec at several batch sizes", arguments, run_command))
