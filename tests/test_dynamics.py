import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainlab.cli import main
from trainlab.study.store import StudyStore

QUICK = ["--set", "task.source=offline", "--set", "task.n_train=1000", "--set", "task.n_test=300",
         "--set", "stage1_epochs=1", "--set", "gd_steps=10", "--set", "runs=20", "--set", "run_steps=60",
         "--set", "hessian_steps=2", "--set", "gd_run_steps=10", "--quiet"]


def stage_folders(study: Path) -> dict:
    """(stage, lr) -> trial folder, from study.json."""
    store = StudyStore.open(study)
    return {(t["overrides"]["job.stage"], t["overrides"]["job.lr"]): store.trial_dir(t["index"])
            for t in store.meta["trials"]}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("dyn")
    assert main(["dynamics", "--setup", "1", "--output-root", str(root), *QUICK]) == 0
    return next(root.glob("dynamics-setup1-*"))


def test_every_stage_writes_its_outputs(study):
    stages = stage_folders(study)
    assert sorted(stages) == [(1, None), (2, None), (3, 0.001), (3, 0.05), (4, 0.001), (4, 0.05), (5, 0.001), (5, 0.05)]
    for path in [stages[1, None] / "checkpoint.pt", stages[2, None] / "checkpoint.pt", stages[3, 0.05] / "trajectory.npz",
                 stages[4, 0.05] / "weights.npy", stages[4, 0.05] / "runs.json", stages[5, 0.05] / "summary.json",
                 study / "val_loss" / "val_loss.csv", study / "val_loss" / "summary.json",
                 study / "val_loss" / "histograms.png", study / "report.md"]:
        assert path.exists(), path
    with np.load(stages[3, 0.05] / "trajectory.npz") as trajectory:
        assert trajectory["params"].shape == (3, 386) and trajectory["eigenvalues"].shape == (2, 5)
        assert np.all(np.diff(trajectory["eigenvalues"], axis=1) <= 0)  # descending
    assert json.loads((stages[3, 0.05] / "trajectory.json").read_text())["method"] == "exact"
    weights = np.load(stages[4, 0.05] / "weights.npy", mmap_mode="r")
    assert weights.shape == (20, 1, 386) and weights.dtype == np.float64
    setup = json.loads((study / "study.json").read_text())["spec"]["job"]["setup"]
    assert setup["sampler"] == "shuffle" and setup["dtype"] == "float64"
    stage2 = json.loads((stages[2, None] / "summary.json").read_text())
    assert stage2["name"] == "gd" and stage2["arms"]["gd"]["final_test_loss"] > 0


def test_validation_loss_spread_grows_with_the_learning_rate(study):
    summary = json.loads((study / "val_loss" / "summary.json").read_text())
    assert summary["lr=0.05"]["std"] > summary["lr=0.001"]["std"]
    assert summary["spread_grows_with_lr"] is True
    assert set(summary["lr=0.05"]["quantiles"]) == {"0.05", "0.25", "0.5", "0.75", "0.95"}
    assert summary["lr=0.05"]["mean_weight_model_val_loss"] > 0
    assert "Spread grows with the learning rate: True" in (study / "report.md").read_text()


def test_force_replaces_a_stage_whole_and_keeps_the_others(study):
    stages = stage_folders(study)
    stage1 = (stages[1, None] / "summary.json").stat().st_mtime_ns
    stale = stages[4, 0.05] / "left-over.txt"
    stale.write_text("from an earlier run")
    assert main(["dynamics", "--results-dir", str(study), "--stage", "4", "--force", "--quiet"]) == 0
    assert not stale.exists() and (stages[4, 0.05] / "runs.json").exists()
    assert (stages[1, None] / "summary.json").stat().st_mtime_ns == stage1


def test_a_killed_study_resumes_and_its_report_is_rebuilt(tmp_path):
    argv = [sys.executable, "-m", "trainlab", "dynamics", "--setup", "1", "--output-root", str(tmp_path), *QUICK]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("*/stages/*/summary.json"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    study = next(tmp_path.glob("dynamics-setup1-*"))
    assert not (study / "val_loss" / "summary.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "trainlab", "resume", str(study), "--quiet"], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert len(list(study.glob("stages/*/summary.json"))) == 8
    first = (study / "report.md").read_text()
    (study / "report.md").unlink()
    rebuilt = subprocess.run([sys.executable, "-m", "trainlab", "report", str(study)], capture_output=True, text=True)
    assert rebuilt.returncode == 0 and (study / "report.md").read_text() == first


def test_bad_setups_and_fields_are_named(tmp_path, capsys):
    assert main(["dynamics", "--setup", "9", "--output-root", str(tmp_path)]) == 2
    assert "--setup 9: allowed setups are 1, 2" in capsys.readouterr().err
    assert main(["dynamics", "--setup", "1", "--set", "runz=5", "--output-root", str(tmp_path)]) == 2
    assert "runz: unknown field" in capsys.readouterr().err
    assert main(["dynamics", "--results-dir", str(tmp_path), "--set", "runs=5"]) == 2
    assert "--results-dir: the study keeps the settings it was made with" in capsys.readouterr().err
    assert main(["dynamics", "--setup", "1", "--force", "--output-root", str(tmp_path)]) == 2
    assert "--force: only with --results-dir" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
