"""The same numbers by default: the torch thread count is part of the study, so every executor,
a resume after SIGKILL and a fault replay give identical records with no flag anywhere; and Ray
runs whatever the machine's Ray state (a leftover cluster file, RAY_ADDRESS)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_spec_until_killed, strip_times
from trainlab.cli import main
from trainlab.io import read_jsonl

# float32 and a BatchNorm CNN: its reductions over a batch differ in the last bits between thread
# counts (checked below), so a wrong count anywhere shows as a different record
CNN = {"name": "cnn", "seed": 5, "task": {"name": "mnist-cnn", "source": "offline", "n_train": 256, "n_test": 128},
       "arms": [{"name": "sgd", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
                {"name": "adam", "optimizer": "adam", "lr": 0.003}],
       "plan": {"steps": 40, "batch_size": 32, "dtype": "float32", "eval_every": 10},
       "sweep": {"repeats": 2}}
TRAINLAB = Path(sys.executable).with_name("trainlab")  # the installed command: it puts no folder of the user's on sys.path


def records(study: Path) -> dict:
    meta = json.loads((study / "study.json").read_text())
    return {t["key"]: strip_times(read_jsonl(study / "trials" / f"trial_{t['index']:04d}" / "metrics.jsonl"))
            for t in meta["trials"]}


def the_study(root: Path) -> Path:
    (study,) = [p for p in root.iterdir() if p.is_dir()]
    return study


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_cli(*args, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(TRAINLAB), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def stale_ray(monkeypatch):
    """A machine where `ray start` once ran: Ray's temp folder (the test's own, short enough for
    Ray's sockets) holds a cluster file naming a cluster long gone, and RAY_ADDRESS names one too."""
    folder = Path(tempfile.mkdtemp(prefix="tlray", dir="/tmp"))
    (folder / "ray_current_cluster").write_text(f"127.0.0.1:{closed_port()}\n")
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port()}")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_thread_count_changes_this_models_numbers(tmp_path):
    """The premise of the tests below: were a count not the study's, the records would differ."""
    spec = write_spec(tmp_path, {**CNN, "plan": {**CNN["plan"], "steps": 10}, "sweep": {}})
    for threads in (1, 2):
        assert main(["run", str(spec), "--quiet", "--threads", str(threads), "--output-root",
                     str(tmp_path / str(threads))]) == 0
    one, two = (records(the_study(tmp_path / t)) for t in ("1", "2"))
    assert one.keys() == two.keys() and one != two
    assert json.loads((the_study(tmp_path / "2") / "study.json").read_text())["threads"] == 2


def test_every_executor_and_a_resume_after_sigkill_give_identical_records(tmp_path, stale_ray):
    pytest.importorskip("ray")
    spec = write_spec(tmp_path, CNN)
    studies = {}
    for name, flags in {"inline": [], "pool": ["--workers", "2"], "ray": ["--executor", "ray", "--workers", "2"]}.items():
        assert main(["run", str(spec), "--quiet", "--output-root", str(tmp_path / name), *flags]) == 0, name
        studies[name] = the_study(tmp_path / name)
    assert json.loads((studies["ray"] / "study.json").read_text())["threads"] == 1

    killed = tmp_path / "killed"
    killed.mkdir()
    first_done = lambda: any(killed.glob("*/trials/trial_0000/summary.json"))  # noqa: E731
    run_spec_until_killed({**CNN, "output": {"root": str(killed)}}, killed, first_done)
    study = the_study(killed)
    assert not (study / "trials" / "trial_0001" / "summary.json").exists()
    assert main(["resume", str(study), "--quiet"]) == 0
    studies["resumed"] = study

    first = records(studies["inline"])
    assert len(first) == 2 and all(len(r) > 40 for r in first.values())
    for name, study in studies.items():
        assert records(study) == first, name


def test_fault_replay_reproduces_with_the_study_threads_and_warns_for_another_count(tmp_path, capsys):
    args = ["fault-recovery", "--task", "mnist-cnn", "--num-experiments", "1", "--steps-after-injection", "6",
            "--optimizers", "adam", "sgd", "--injection-window", "4:6", "--quiet", "--output-root", str(tmp_path),
            "--set", "task.source=offline", "--set", "task.n_train=256", "--set", "task.n_test=128",
            "--set", "plan.dtype=float32"]
    assert main(args) == 0
    experiment = the_study(tmp_path) / "experiment_000"
    capsys.readouterr()
    assert main(["fault", "replay", str(experiment)]) == 0
    assert "reproduces" in capsys.readouterr().out
    main(["fault", "replay", str(experiment), "--threads", "2"])
    assert "ran with 1 torch thread(s); numbers may differ" in capsys.readouterr().err


def test_without_address_ray_starts_its_own_instance_whatever_the_machine_left(tmp_path, stale_ray):
    """The CLI end to end, as a user whose machine once ran `ray start` would run it."""
    pytest.importorskip("ray")
    spec = write_spec(tmp_path, {**CNN, "plan": {**CNN["plan"], "steps": 5}})
    done = run_cli("run", spec, "--executor", "ray", "--workers", "2", "--quiet", "--output-root", tmp_path / "out",
                   env=os.environ)
    assert done.returncode == 0, done.stderr
    assert len(records(the_study(tmp_path / "out"))) == 2


@pytest.mark.parametrize("address", ["PORT", "auto"])
def test_an_address_nobody_answers_is_one_line_at_once(tmp_path, stale_ray, capsys, address):
    pytest.importorskip("ray")
    spec = write_spec(tmp_path, CNN)
    if address == "auto":  # with --address auto, RAY_ADDRESS is the cluster to join: a gone one here
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{closed_port()}"
    else:
        address = f"127.0.0.1:{closed_port()}"
    start = time.monotonic()
    assert main(["run", str(spec), "--quiet", "--executor", "ray", "--address", address,
                 "--output-root", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - start < 30
    assert len(err.splitlines()) == 1 and f"--address {address}" in err and "cannot reach" in err, err


def test_auto_with_no_cluster_anywhere_says_so(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    folder = Path(tempfile.mkdtemp(prefix="tlray", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = write_spec(tmp_path, CNN)
    assert main(["run", str(spec), "--quiet", "--executor", "ray", "--address", "auto"]) == 2
    assert "--address auto: no Ray cluster to join" in capsys.readouterr().err
    shutil.rmtree(folder, ignore_errors=True)
