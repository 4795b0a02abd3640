"""Crash safety under fire: a study killed with SIGKILL at random moments and resumed, again
and again; workers killed inside the pool and under Ray; a disk that fills up.

    TRAINLAB_CHAOS_KILLS=25 make chaos     # the long form (CI runs 6 kills)
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import small_spec, strip_times
from trainlab.study import read_jsonl, resume_study, run_study

KILLS = int(os.environ.get("TRAINLAB_CHAOS_KILLS", "6"))


def chaos_spec(root: Path) -> dict:
    spec = small_spec(sweep={"repeats": 4}, plan__steps=120, plan__eval_every=20)
    spec["output"] = {"root": str(root)}
    return spec


def written(study: Path | None) -> int:
    """Bytes the study has written so far (metrics, summaries, report)."""
    total = 0
    for path in study.rglob("*") if study is not None else []:
        try:
            total += path.stat().st_size if path.is_file() and not path.name.startswith(".") else 0
        except OSError:  # renamed or replaced while we looked
            pass
    return total


def torn_tail(path: Path) -> int:
    """Lines of a metrics stream that do not parse; only the last line may be torn."""
    lines = path.read_bytes().split(b"\n")
    bad = [i for i, line in enumerate(lines) if line.strip() and not _parses(line)]
    assert all(i == len(lines) - 1 or (i == len(lines) - 2 and not lines[-1]) for i in bad), f"torn line inside {path}"
    return len(bad)


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def test_random_sigkills_then_resume_give_an_uninterrupted_study(tmp_path):
    rng = random.Random(2026)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(chaos_spec(tmp_path / "runs")))
    kills, runs, study = 0, 0, None
    while True:
        runs += 1
        command = ["run", str(spec_path)] if study is None else ["resume", str(study)]
        proc = subprocess.Popen([sys.executable, "-m", "trainlab", *command, "--quiet"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        while study is None and proc.poll() is None:  # the first kill waits for the study to exist
            found = list((tmp_path / "runs").glob("*/study.json"))
            if found:
                study = found[0].parent
            time.sleep(0.01)
        if kills < KILLS:  # kill while it works: after it writes something new, at a random moment
            before = written(study)
            while proc.poll() is None and written(study) == before:
                time.sleep(0.005)
            deadline = time.time() + rng.uniform(0.0, 0.8)
            while time.time() < deadline and proc.poll() is None:
                time.sleep(0.002)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        code = proc.wait()
        if code == 0 and kills >= KILLS:
            break
        assert code in (0, -signal.SIGKILL), proc.stderr.read().decode()
        if code == 0:  # finished before the kill: start the chaos over on a fresh study
            study = None
            for leftover in (tmp_path / "runs").iterdir():
                leftover.rename(tmp_path / f"done-{runs}-{leftover.name}")
    reference = run_study(chaos_spec(tmp_path / "clean"), quiet=True)
    rows = 0
    summaries = sorted(study.glob("trials/*/summary.json"))
    assert [json.loads(p.read_text())["index"] for p in summaries] == [0, 1, 2, 3]  # each trial exactly once
    for i in range(4):
        name = f"trials/trial_{i:04d}/metrics.jsonl"
        torn_tail(study / name)
        records = read_jsonl(study / name)
        steps = [(r["kind"], r["arm"], r["step"]) for r in records if "step" in r]
        assert len(steps) == len(set(steps)), "a record was duplicated"
        assert strip_times(records) == strip_times(read_jsonl(reference / name))
        rows += len(records)
    assert (study / "report.md").exists()
    print(f"\nchaos: {kills} kills over {runs} runs; 4 trials x 2 arms; {rows} metric rows checked against an "
          "uninterrupted run")


def pool_workers(pid: int) -> list[int]:
    """Process-pool workers of `pid` (spawned children; not its resource tracker)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return out


def kill_when(condition, pick_pid, timeout: float = 60.0) -> threading.Thread:
    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                pid = pick_pid()
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    return
            time.sleep(0.01)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def started(root: Path) -> bool:
    return any(p.stat().st_size > 0 for p in root.glob("*/trials/*/metrics.jsonl"))


def test_a_worker_killed_in_the_pool_is_retried_and_the_study_completes(tmp_path):
    spec = chaos_spec(tmp_path / "pool")
    killed = []

    def pick():
        workers = pool_workers(os.getpid())
        killed.extend(workers[:1])
        return workers[0] if workers else None

    killer = kill_when(lambda: started(tmp_path / "pool"), pick)
    study = run_study(spec, quiet=True, workers=2)
    killer.join()
    assert killed, "no pool worker was seen running a trial"
    reference = run_study(chaos_spec(tmp_path / "clean"), quiet=True)
    for i in range(4):
        name = f"trials/trial_{i:04d}/metrics.jsonl"
        assert strip_times(read_jsonl(study / name)) == strip_times(read_jsonl(reference / name))


def ray_workers() -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"ray::run_detached" in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def test_a_ray_worker_killed_mid_trial_is_retried_and_the_study_completes(tmp_path):
    pytest.importorskip("ray")
    from trainlab.study.executor import ExecutorOptions

    spec = chaos_spec(tmp_path / "ray")
    killed = []

    def pick():
        pids = ray_workers()
        if pids:
            killed.append(pids[0])
        return pids[0] if pids else None

    killer = kill_when(lambda: bool(ray_workers()), pick)
    study = run_study(spec, quiet=True, executor=ExecutorOptions("ray", workers=2))
    killer.join()
    assert killed, "no Ray worker was seen running a trial"
    assert len(list(study.glob("trials/*/summary.json"))) == 4


def test_a_full_disk_ends_cleanly_and_the_study_resumes(tmp_path, monkeypatch, capsys):
    import errno

    from trainlab.cli import main
    from trainlab.study.store import MetricsWriter

    real_flush, calls = MetricsWriter.flush, []

    def flush_until_full(self):
        calls.append(1)
        if len(calls) > 150:  # some way into the second trial
            raise OSError(errno.ENOSPC, "No space left on device", str(self.fh.name))
        real_flush(self)

    monkeypatch.setattr(MetricsWriter, "flush", flush_until_full)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(chaos_spec(tmp_path / "runs")))
    assert main(["run", str(spec_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trainlab: error: no space left on the device of") and "trainlab resume" in err
    assert len(err.splitlines()) == 1
    (study,) = (tmp_path / "runs").iterdir()
    monkeypatch.setattr(MetricsWriter, "flush", real_flush)  # space is back
    resume_study(study, quiet=True)
    reference = run_study(chaos_spec(tmp_path / "clean"), quiet=True)
    for i in range(4):
        name = f"trials/trial_{i:04d}/metrics.jsonl"
        assert strip_times(read_jsonl(study / name)) == strip_times(read_jsonl(reference / name))


def test_a_study_runs_in_one_process_at_a_time(tmp_path):
    """A second `resume` while the study trains is refused (exit 2, one line, nothing touched);
    once the first process dies, even by SIGKILL, the study is free again."""
    spec = chaos_spec(tmp_path / "runs")
    spec["plan"]["steps"] = 4000
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    first = subprocess.Popen([sys.executable, "-m", "trainlab", "run", str(spec_path), "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not started(tmp_path / "runs") and time.time() < deadline:
            assert first.poll() is None, first.stderr.read().decode()
            time.sleep(0.02)
        (study,) = (tmp_path / "runs").iterdir()
        before = sorted(p.name for p in study.rglob("*"))
        second = subprocess.run([sys.executable, "-m", "trainlab", "resume", str(study), "--quiet"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1 and f"pid {first.pid}" in second.stderr
        assert "being run by another process" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None and sorted(p.name for p in study.rglob("*")) == before
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    from trainlab.study import StudyStore

    with StudyStore.open(study).lock():  # the killed holder left no lock behind
        assert (study / ".lock").read_text().strip() == str(os.getpid())


def test_the_dp_consistency_suite_resumes_after_sigkill_and_its_report_is_rebuilt(tmp_path):
    """The suite is a study: kill it after its first trial, resume it, rebuild its report."""
    argv = [sys.executable, "-m", "trainlab", "dp-consistency", "--model", "gpt-tiny", "--modes", "bk", "ghost",
            "--steps", "3", "--batch-size", "4", "--seq-len", "16", "--output-root", str(tmp_path), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("*/trials/*/summary.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    study = next(tmp_path.glob("dp-consistency-*"))
    done = len(list(study.glob("trials/*/summary.json")))
    assert 1 <= done < 6 and not (study / "summary.md").exists()
    resumed = subprocess.run([sys.executable, "-m", "trainlab", "resume", str(study), "--quiet"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((study / "summary.json").read_text())
    assert summary["passed"] and summary["finished"] == summary["trials"] == 6  # 2 regimes x (reference + 2 modes)
    first = (study / "summary.md").read_text()
    (study / "summary.md").unlink()
    rebuilt = subprocess.run([sys.executable, "-m", "trainlab", "report", str(study)], capture_output=True, text=True)
    assert rebuilt.returncode == 0 and (study / "summary.md").read_text() == first
