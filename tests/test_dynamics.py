import json

import numpy as np
import pytest

from trainlab.cli import main

QUICK = ["--set", "task.source=offline", "--set", "task.n_train=1000", "--set", "task.n_test=300",
         "--set", "stage1_epochs=1", "--set", "gd_steps=10", "--set", "runs=20", "--set", "run_steps=60",
         "--set", "hessian_steps=2", "--set", "gd_run_steps=10", "--quiet"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("dyn")
    assert main(["dynamics", "--setup", "1", "--output-root", str(root), *QUICK]) == 0
    return root / "dynamics-setup1"


def test_every_stage_writes_its_outputs(pipeline):
    for path in ["setup.json", "stage1_sgd/checkpoint.pt", "stage2_gd/checkpoint.pt", "stage3_hessian/lr_0.001.npz",
                 "stage3_hessian/lr_0.05.npz", "stage4_runs/lr_0.05/weights.npy", "stage4_runs/lr_0.05/runs.json",
                 "stage5_gd/summary.json", "stage6_val_loss/val_loss.csv", "stage6_val_loss/summary.json",
                 "stage6_val_loss/histograms.png"]:
        assert (pipeline / path).exists(), path
    with np.load(pipeline / "stage3_hessian" / "lr_0.05.npz") as trajectory:
        assert trajectory["params"].shape == (3, 386) and trajectory["eigenvalues"].shape == (2, 5)
        assert np.all(np.diff(trajectory["eigenvalues"], axis=1) <= 0)  # descending
    weights = np.load(pipeline / "stage4_runs" / "lr_0.05" / "weights.npy", mmap_mode="r")
    assert weights.shape == (20, 1, 386) and weights.dtype == np.float64
    setup = json.loads((pipeline / "setup.json").read_text())
    assert setup["sampler"] == "shuffle" and setup["dtype"] == "float64"
    stage2 = json.loads((pipeline / "stage2_gd" / "summary.json").read_text())
    assert stage2["spec"]["plan"]["init_from"].endswith("stage1_sgd/checkpoint.pt")
    assert stage2["spec"]["plan"]["dtype"] == "float64" and stage2["spec"]["arms"][0]["optimizer"] == "gd"


def test_validation_loss_spread_grows_with_the_learning_rate(pipeline):
    summary = json.loads((pipeline / "stage6_val_loss" / "summary.json").read_text())
    assert summary["lr=0.05"]["std"] > summary["lr=0.001"]["std"]
    assert summary["spread_grows_with_lr"] is True
    assert set(summary["lr=0.05"]["quantiles"]) == {"0.05", "0.25", "0.5", "0.75", "0.95"}
    assert summary["lr=0.05"]["mean_weight_model_val_loss"] > 0


def test_finished_stages_are_skipped_and_force_reruns(pipeline, capsys):
    before = (pipeline / "stage4_runs" / "lr_0.05" / "runs.json").stat().st_mtime_ns
    assert main(["dynamics", "--setup", "1", "--output-root", str(pipeline.parent), *QUICK[:-1]]) == 0
    assert "outputs exist, skipped" in capsys.readouterr().err
    assert (pipeline / "stage4_runs" / "lr_0.05" / "runs.json").stat().st_mtime_ns == before
    assert main(["dynamics", "--setup", "1", "--stage", "4", "--force", "--output-root", str(pipeline.parent),
                 *QUICK]) == 0
    assert (pipeline / "stage4_runs" / "lr_0.05" / "runs.json").stat().st_mtime_ns != before


def test_bad_setups_and_fields_are_named(tmp_path, capsys):
    assert main(["dynamics", "--setup", "9", "--output-root", str(tmp_path)]) == 2
    assert "--setup 9: allowed setups are 1, 2" in capsys.readouterr().err
    assert main(["dynamics", "--setup", "1", "--set", "runz=5", "--output-root", str(tmp_path)]) == 2
    assert "runz: unknown field" in capsys.readouterr().err
    assert main(["dynamics", "--setup", "1", "--stage", "3", "--output-root", str(tmp_path)]) == 2
    assert "stage 2 has not run yet" in capsys.readouterr().err
