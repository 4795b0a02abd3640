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
         "--set", "hessian_steps=2", "--set", "gd_run_steps=10", "--set", "lrs=[0.001,0.05]",
         "--set", "trajectory_steps=[30]", "--quiet"]


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
    figures = [study / "val_loss" / name for name in ("curves.png", "eigenvalues.png", "spread.png", "gd_vs_sgd.png",
                                                      "histograms.png")]
    outputs = [stages[1, None] / "checkpoint.pt", stages[2, None] / "checkpoint.pt", stages[3, 0.05] / "trajectory.npz",
               stages[3, 0.05] / "trajectory.json", stages[4, 0.05] / "weights.npy", stages[4, 0.05] / "runs.json",
               stages[5, 0.05] / "summary.json", stages[1, None] / "stage.json", study / "val_loss" / "val_loss.csv",
               study / "val_loss" / "summary.json", study / "report.md", *figures]
    for path in outputs:
        assert path.exists(), path
        assert path.stat().st_mode & 0o777 == 0o644, path  # every file the same mode, JSON included
    with np.load(stages[3, 0.05] / "trajectory.npz") as trajectory:
        assert trajectory["params"].shape == (3, 386) and trajectory["eigenvalues"].shape == (2, 5)
        assert np.all(np.diff(trajectory["eigenvalues"], axis=1) <= 0)  # descending
    hessian = json.loads((stages[3, 0.05] / "trajectory.json").read_text())
    assert hessian["method"] == "lanczos" and hessian["batchnorm"] == "none"
    weights = np.load(stages[4, 0.05] / "weights.npy", mmap_mode="r")
    assert weights.shape == (20, 2, 386) and weights.dtype == np.float64  # step 30 and the last
    assert json.loads((stages[4, 0.05] / "runs.json").read_text())["record_steps"] == [30, 60]
    setup = json.loads((study / "study.json").read_text())["spec"]["job"]["setup"]
    assert setup["sampler"] == "shuffle" and setup["dtype"] == "float64" and setup["seed"] == 42
    stage2 = json.loads((stages[2, None] / "summary.json").read_text())
    assert stage2["name"] == "gd" and stage2["arms"]["gd"]["final_test_loss"] > 0
    report = (study / "report.md").read_text()
    assert all(f"(val_loss/{path.name})" in report for path in figures)
    assert "the runs start where GD (stage 2) ended: held-out loss" in report


def test_the_exact_hessian_on_request_equals_lanczos(study, tmp_path):
    from trainlab.recipes.dynamics import hessian_stage, setup_of

    s = json.loads((study / "study.json").read_text())["spec"]["job"]["setup"]
    stages = stage_folders(study)
    values = {}
    for method in ("exact", "lanczos"):
        folder = tmp_path / method
        folder.mkdir()
        setup = setup_of("mnist", 1, [f"hessian_method={method}"], base=s)
        hessian_stage(setup, 0.05, stages[2, None] / "checkpoint.pt", folder, None)
        with np.load(folder / "trajectory.npz") as data:
            values[method] = data["eigenvalues"]
        assert json.loads((folder / "trajectory.json").read_text())["method"] == method
    assert np.allclose(values["exact"], values["lanczos"], rtol=1e-6, atol=1e-9)


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
    assert "--setup 9: allowed setups of experiment mnist are 1, 2, 3, 4, 6, 7, 8" in capsys.readouterr().err
    assert main(["dynamics", "--setup", "5", "--output-root", str(tmp_path)]) == 2
    assert "exp1 has no setup 5" in capsys.readouterr().err
    assert main(["dynamics", "--experiment", "shakespeare", "--setup", "3", "--output-root", str(tmp_path)]) == 2
    assert "allowed setups of experiment shakespeare are 1, 2" in capsys.readouterr().err
    assert main(["dynamics", "--setup", "1", "--set", "runz=5", "--output-root", str(tmp_path)]) == 2
    assert "runz: unknown field" in capsys.readouterr().err
    assert main(["dynamics", "--setup", "1", "--set", "train_data=shakespeare", "--output-root", str(tmp_path)]) == 2
    assert "shakespeare trains and validates on text only" in capsys.readouterr().err
    assert main(["dynamics", "--setup", "1", "--set", "trajectory_steps=[0]", "--output-root", str(tmp_path)]) == 2
    assert "trajectory_steps: every step must lie in 1..run_steps (1111)" in capsys.readouterr().err
    assert main(["dynamics", "--results-dir", str(tmp_path), "--set", "runs=5"]) == 2
    assert "is not a study directory" in capsys.readouterr().err
    assert main(["dynamics", "--setup", "1", "--force", "--output-root", str(tmp_path)]) == 2
    assert "--force: only with --results-dir" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def docs_table() -> list[dict]:
    """The rows of docs/dynamics.md's table of the researchers' setups."""
    text = (Path(__file__).parents[1] / "docs" / "dynamics.md").read_text()
    lines = text[text.index("| experiment | setup |"):].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [cell.strip() for cell in line.strip("|").split("|")])))
    return rows


def test_every_setup_resolves_to_the_table_in_the_docs(capsys, monkeypatch, tmp_path):
    import trainlab.recipes.dynamics as dynamics
    from trainlab.recipes.dynamics import SETUPS, setup_of, task_of

    rows = docs_table()
    assert {(row["experiment"], int(row["setup"])) for row in rows} == {(e, n) for e in SETUPS for n in SETUPS[e]}
    for row in rows:
        s = setup_of(row["experiment"], int(row["setup"]), [])
        assert (s.task["name"], s.train_data, s.val_data, s.sampler, s.dtype) == (
            row["task"], row["train data"], row["validation data"], row["sampler"], row["dtype"]), row
        assert s.lrs == [float(v) for v in row["lrs"].split(",")], row
        assert (s.stage1_epochs, s.gd_steps, s.runs) == (float(row["stage1_epochs"]), int(row["gd_steps"]),
                                                         int(row["runs"])), row
        assert (s.seed, s.batch_size, s.stage1_sampler, s.run_steps, s.hessian_steps) == (42, 64, "shuffle", 1111, 1000)
        assert s.stage1_lr == s.gd_lr == (0.1 if s.experiment == "mnist" else 0.01)
    similar = task_of(setup_of("mnist", 4, []))  # trained on similar digits, validated on all ten
    assert similar["classes"] == [3, 5, 8] and similar["test_classes"] == list(range(10))
    assert "classes" not in {k for k, v in task_of(setup_of("mnist", 1, [])).items() if v}
    validated_on_similar = task_of(setup_of("mnist", 1, ["val_data=mnist_similar"]))
    assert validated_on_similar["classes"] is None and validated_on_similar["test_classes"] == [3, 5, 8]
    # the command prints what it resolved before it runs
    monkeypatch.setattr(dynamics, "run_study", lambda *a, **k: tmp_path)
    assert main(["dynamics", "--setup", "4", "--output-root", str(tmp_path)]) == 0
    printed = capsys.readouterr().err
    assert "experiment mnist, setup 4" in printed and 'train_data: "mnist_similar"' in printed
    assert 'val_data: "mnist"' in printed and 'sampler: "replacement"' in printed and "lrs: [0.1, 0.01]" in printed


def test_setup_4_trains_on_similar_digits_and_validates_on_all_ten():
    from trainlab.engine import Trial
    from trainlab.recipes.dynamics import setup_of, trial_spec

    s = setup_of("mnist", 4, ["task.source=offline", "task.n_train=300", "task.n_test=300"])
    trial = Trial(trial_spec(s, "sgd", 0.1, steps=1))
    assert set(trial.y_train.tolist()) == {3, 5, 8}
    assert set(trial.y_test.tolist()) == set(range(10))


CNN_QUICK = ["--set", "task.source=offline", "--set", "task.n_train=300", "--set", "task.n_test=100",
             "--set", "stage1_epochs=1", "--set", "gd_steps=3", "--set", "runs=4", "--set", "run_steps=8",
             "--set", "hessian_steps=2", "--set", "gd_run_steps=3", "--set", "lrs=[0.1]", "--quiet"]


def test_reruns_are_refused_or_replace_whole_stages(tmp_path, capsys):
    assert main(["dynamics", "--setup", "3", "--stage", "4", "5", "--output-root", str(tmp_path), *CNN_QUICK]) == 0
    study = next(tmp_path.glob("dynamics-setup3-*"))
    summary = json.loads((study / "val_loss" / "summary.json").read_text())
    assert "recomputed over the 300 training samples" in summary["mean_weight_model_batchnorm"]
    assert np.load(stage_folders(study)[4, 0.1] / "buffers.npz")["bn.running_mean"].shape == (4, 12)
    earlier = {key: json.loads((folder / "summary.json").read_text()) for key, folder in stage_folders(study).items()}
    assert sorted(earlier) == [(1, None), (2, None), (4, 0.1), (5, 0.1)]
    # a stage the study does not have yet is added; the finished ones stay as they are
    assert main(["dynamics", "--results-dir", str(study), "--stage", "3", "--quiet"]) == 0
    assert sorted(stage_folders(study)) == [(1, None), (2, None), (3, 0.1), (4, 0.1), (5, 0.1)]
    def content(summary: dict) -> dict:  # what a stage found, without its place in the study
        return {k: v for k, v in summary.items() if k not in ("index", "key")}

    for key, summary in earlier.items():
        assert content(json.loads((stage_folders(study)[key] / "summary.json").read_text())) == content(summary), key
    capsys.readouterr()
    before = {key: (folder / "summary.json").read_bytes() for key, folder in stage_folders(study).items()}
    # the same settings: nothing to do; other settings: one line, nothing touched
    assert main(["dynamics", "--results-dir", str(study), *CNN_QUICK]) == 0
    for change, said in ((["--set", "runs=6"], "stage 4 (many-sgd, lr 0.1) ran with runs=4, asked runs=6"),
                         (["--set", "stage1_lr=0.2"], "stage 1 (sgd) ran with stage1_lr=0.1, asked stage1_lr=0.2"),
                         (["--set", "lrs=[0.05]"], "stage 3 (hessian, lr 0.1) ran with lr 0.1, which lrs=[0.05] drops"),
                         (["--setup", "4"], "stage 1 (sgd) ran with train_data=\"mnist\", asked")):
        assert main(["dynamics", "--results-dir", str(study), *change, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert said in err and "start a new study (without --results-dir), or add --force" in err
        assert err.count("\n") == 1
    assert {key: (folder / "summary.json").read_bytes() for key, folder in stage_folders(study).items()} == before
    # --force: the changed stage is replaced whole, the others kept as they were
    stale = stage_folders(study)[4, 0.1] / "left-over.txt"
    stale.write_text("from the earlier runs")
    assert main(["dynamics", "--results-dir", str(study), "--set", "runs=6", "--force", "--quiet"]) == 0
    stages = stage_folders(study)
    assert not stale.exists() and np.load(stages[4, 0.1] / "weights.npy", mmap_mode="r").shape[0] == 6
    for key in [(1, None), (2, None), (3, 0.1), (5, 0.1)]:
        assert content(json.loads((stages[key] / "summary.json").read_text())) == content(json.loads(before[key]))
    assert json.loads((study / "val_loss" / "summary.json").read_text())["lr=0.1"]["runs"] == 6
    # another learning rate list: the dropped lr's stages go, the new one's run, stage 1-2 stay
    assert main(["dynamics", "--results-dir", str(study), "--set", "runs=6", "--set", "lrs=[0.05]", "--force",
                 "--quiet"]) == 0
    stages = stage_folders(study)
    assert sorted(stages) == [(1, None), (2, None), (3, 0.05), (4, 0.05), (5, 0.05)]
    assert sorted(p.name for p in (study / "stages").iterdir()) == [f"{i:02d}" for i in range(5)]
    assert "| 0.05 | 6 |" in (study / "report.md").read_text() and "| 0.1 |" not in (study / "report.md").read_text()
    assert main(["resume", str(study), "--quiet"]) == 0  # the rewritten study is whole
    # new settings that cannot run are refused before anything finished is removed
    assert main(["dynamics", "--results-dir", str(study), "--set", "task.n_train=999999", "--force", "--quiet"]) == 2
    assert "task.n_train: 999999 requested" in capsys.readouterr().err
    assert sorted(stage_folders(study)) == [(1, None), (2, None), (3, 0.05), (4, 0.05), (5, 0.05)]


def test_a_killed_rewrite_is_finished_by_the_next_call_and_nothing_trains_over_it(study_copy, monkeypatch, capsys):
    import trainlab.recipes.dynamics as dynamics

    stage4 = (stage_folders(study_copy)[4, 0.05] / "runs.json").read_bytes()
    real = dynamics.finish_respec
    calls = []

    def killed(store):  # the kill comes after the first kept stage moved into .respec/
        calls.append(store)
        if len(calls) == 2:
            journal = json.loads((store.root / dynamics.JOURNAL).read_text())
            old, index = journal["moves"][0]
            (store.root / ".respec").mkdir()
            os.replace(store.root / old, store.root / ".respec" / str(index))
            raise KeyboardInterrupt
        real(store)

    monkeypatch.setattr(dynamics, "finish_respec", killed)
    assert main(["dynamics", "--results-dir", str(study_copy), "--set", "gd_run_steps=12", "--force", "--quiet"]) != 0
    monkeypatch.setattr(dynamics, "finish_respec", real)
    capsys.readouterr()
    assert main(["resume", str(study_copy), "--quiet"]) != 0  # the stages refuse to train over kept ones
    assert "an interrupted --force rewrite" in capsys.readouterr().err
    assert main(["dynamics", "--results-dir", str(study_copy), "--quiet"]) == 0
    stages = stage_folders(study_copy)
    assert not (study_copy / dynamics.JOURNAL).exists() and not (study_copy / ".respec").exists()
    assert (stages[4, 0.05] / "runs.json").read_bytes() == stage4  # kept whole through the kill
    assert json.loads((stages[5, 0.05] / "stage.json").read_text())["settings"]["gd_run_steps"] == 12


def test_the_report_never_shows_outputs_of_replaced_stages(study_copy):
    from trainlab.recipes.dynamics_report import build_dynamics_report

    stages = stage_folders(study_copy)
    for lr in (0.001, 0.05):  # stage 4 replaced and not finished again
        (stages[4, lr] / "summary.json").unlink()
    build_dynamics_report(study_copy)
    left = sorted(p.name for p in (study_copy / "val_loss").iterdir())
    assert left == ["curves.png", "eigenvalues.png"]
    assert "has not finished: no validation-loss distribution yet" in (study_copy / "report.md").read_text()


def test_studies_of_other_kinds_or_versions_are_one_line(study_copy, tmp_path, capsys):
    meta = json.loads((study_copy / "study.json").read_text())
    setup = meta["spec"]["job"]["setup"]
    setup["dataset"] = setup.pop("train_data")  # as an older trainlab wrote it
    (study_copy / "study.json").write_text(json.dumps(meta))
    assert main(["dynamics", "--results-dir", str(study_copy), "--quiet"]) == 2
    assert "made by an older trainlab" in capsys.readouterr().err
    assert main(["report", str(study_copy)]) == 2
    assert "made by an older trainlab" in capsys.readouterr().err
    meta["spec"]["job"] = None  # an ordinary study
    (study_copy / "study.json").write_text(json.dumps(meta))
    assert main(["dynamics", "--results-dir", str(study_copy), "--quiet"]) == 2
    assert "is not a dynamics study" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--stage", "6"], ["--stage", "6", "--force"], ["--stage", "2", "5", "--force"],
                                  ["--force"], ["--stage", "3"]])
def test_stage_and_flag_combinations_end_cleanly(study_copy, argv, capsys):
    code = main(["dynamics", "--results-dir", str(study_copy), *argv, "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if argv == ["--force"]:
        assert code == 2 and "--force: name the stages to run again" in err
    else:
        assert code == 0 and (study_copy / "report.md").exists()


@pytest.fixture
def study_copy(study, tmp_path):
    import shutil

    return Path(shutil.copytree(study, tmp_path / study.name))


def test_the_shakespeare_experiment_runs_every_stage_with_batched_gpt_runs(tmp_path):
    argv = ["dynamics", "--experiment", "shakespeare", "--setup", "2", "--output-root", str(tmp_path),
            "--set", "task.n_chars=1200", "--set", "stage1_epochs=0.2", "--set", "gd_steps=3", "--set", "runs=5",
            "--set", "run_steps=6", "--set", "hessian_steps=2", "--set", "gd_run_steps=3", "--quiet"]
    assert main(argv) == 0
    study = next(tmp_path.glob("dynamics-shakespeare-setup2-*"))
    stages = stage_folders(study)
    assert sorted(stages) == [(1, None), (2, None), (3, 0.01), (4, 0.01), (5, 0.01)]
    runs = json.loads((stages[4, 0.01] / "runs.json").read_text())
    assert runs["method"] == "vmap" and runs["sampler"] == "replacement" and len(runs["last"]["loss"]) == 5
    assert np.load(stages[4, 0.01] / "losses.npy").shape == (5, 6)
    summary = json.loads((study / "val_loss" / "summary.json").read_text())
    assert summary["lr=0.01"]["runs"] == 5 and summary["lr=0.01"]["std"] > 0
    assert "experiment shakespeare, setup 2" in (study / "report.md").read_text()
