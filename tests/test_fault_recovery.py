import json
from pathlib import Path

import pytest

from trainlab.cli import main
from trainlab.recipes.fault_recovery import replay
from trainlab.study.store import read_json

QUICK = ["fault-recovery", "--task", "mnist-mlp", "--num-experiments", "2", "--steps-after-injection", "10",
         "--optimizers", "adam", "sgd", "rmsprop", "--injection-window", "20:30", "--learning-rate", "0.05",
         "--quiet", "--set", "task.source=offline", "--set", "task.n_train=1000", "--set", "task.n_test=500"]
TRAINED_SGD = ["--set", "arms.sgd.momentum=0.9"]  # plain SGD at this rate is still near chance by step 20


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fr")
    assert main([*QUICK, *TRAINED_SGD, "--output-root", str(root)]) == 0
    (study,) = root.iterdir()
    return study


def test_the_study_writes_the_whole_tree(study):
    names = {p.name for p in study.iterdir()}
    assert {"all_injection_configs.json", "experiment_000", "experiment_001", "final_report.md",
            "summary_visualizations.png", "study.json"} <= names
    for i in range(2):
        folder = study / f"experiment_{i:03d}"
        files = {p.name for p in folder.iterdir()}
        assert {"injection_config.json", "injection_batch.npz", "results.json", "history_adam.csv", "history_sgd.csv",
                "history_rmsprop.csv", "comparison_plots.png", "recovery_zoom.png"} <= files
        for png in ("comparison_plots.png", "recovery_zoom.png"):
            assert (folder / png).stat().st_size > 20_000
    assert (study / "summary_visualizations.png").stat().st_size > 50_000


def test_the_plan_was_drawn_up_front_and_every_arm_was_hit_at_the_same_site(study):
    plan = read_json(study / "all_injection_configs.json")
    assert [p["experiment"] for p in plan] == [0, 1]
    for entry in plan:
        folder = study / f"experiment_{entry['experiment']:03d}"
        injection = read_json(folder / "injection_config.json")
        assert injection["step"] == entry["step"] and injection["indices"] == entry["indices"]
        assert injection["tensor"] == entry["tensor"] and 20 <= entry["step"] <= 30
        assert entry["epoch"] * (1000 // 64) + entry["step_in_epoch"] == entry["step"]
        for arm, realised in injection["arms"].items():
            assert realised["applied"] and realised["step"] == entry["step"]
            assert realised["new"] == pytest.approx(entry["values"], rel=1e-6)  # float32 of the drawn values


def test_report_compares_every_pair_of_arms_with_uncertainty(study):
    report = (study / "final_report.md").read_text()
    for a, b in [("adam", "sgd"), ("adam", "rmsprop"), ("sgd", "rmsprop")]:
        assert f"| {a} | {b} |" in report
    assert "95%" in report and "Wilcoxon" in report and "## Findings" in report
    results = read_json(study / "experiment_000" / "results.json")
    for arm in ("adam", "sgd", "rmsprop"):
        metrics = results["arms"][arm]
        assert set(metrics) >= {"accuracy_pre", "accuracy_post", "accuracy_final", "accuracy_change",
                                "total_recovery", "degradation_rate", "steps_to_recover", "peak_loss_spike",
                                "diverged", "divergence_step"}


def test_history_csv_has_train_and_held_out_columns(study):
    import pandas as pd

    frame = pd.read_csv(study / "experiment_000" / "history_adam.csv")
    assert list(frame.columns) == ["step", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
    assert frame["test_accuracy"].notna().sum() >= 3


def test_replay_reproduces_results_exactly_and_notices_a_change(study, capsys):
    folder = study / "experiment_001"
    assert replay(folder) == (True, [])
    assert main(["fault", "replay", str(folder)]) == 0
    assert "reproduces" in capsys.readouterr().out
    results = read_json(folder / "results.json")
    results["arms"]["sgd"]["accuracy_final"] = 0.123
    (folder / "results.json").write_text(json.dumps(results))
    ok, problems = replay(folder)
    assert not ok and problems == ["results.json differs at arms.sgd.accuracy_final"]
    assert main(["fault", "replay", str(folder)]) == 1


def test_report_command_rebuilds_the_fault_report(study):
    (study / "final_report.md").unlink()
    assert main(["report", str(study)]) == 0
    assert (study / "final_report.md").exists()


def test_a_diverging_fault_is_reported_as_divergence(tmp_path):
    argv = [*QUICK, "--num-experiments", "1", "--optimizers", "sgd", "adam", "--value", "3e38",
            "--layer", "net.0.weight", "--output-root", str(tmp_path)]
    assert main(argv) == 0
    (study,) = tmp_path.iterdir()
    results = read_json(study / "experiment_000" / "results.json")
    assert any(results["arms"][a]["diverged"] for a in ("sgd", "adam"))
    assert "diverged in 1 of 1" in (study / "final_report.md").read_text()


@pytest.mark.parametrize("extra, words", [
    (["--optimizers", "adam", "lion"], "--optimizers: unknown optimizer 'lion'"),
    (["--mitigations", "pray"], "--mitigations: unknown mitigation 'pray'"),
    (["--injection-window", "7"], "--injection-window '7': expected LO:HI"),
    (["--injection-window", "30:10"], "--injection-window: window must be lo:hi"),
    (["--fault", "gamma_ray"], "--fault: unknown fault 'gamma_ray' (allowed: add_noise, bitflip"),
    (["--num-experiments", "0"], "--num-experiments: must be at least 1"),
    (["--layer", "fc9"], "--layer/--bit: layer 'fc9' is not a weights site"),
])
def test_bad_flags_exit_2_naming_the_flag(tmp_path, capsys, extra, words):
    assert main([*QUICK, "--output-root", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not any(tmp_path.iterdir())


def test_untrained_arms_give_no_conclusion_and_no_winner(tmp_path):
    """SGD at lr 1e-4 for a handful of steps never leaves chance: the report says so first."""
    argv = [*QUICK, "--optimizers", "sgd", "adam", "--learning-rate", "0.0001", "--pretrain-accuracy", "0",
            "--output-root", str(tmp_path)]
    assert main(argv) == 0
    report = (next(tmp_path.iterdir()) / "final_report.md").read_text()
    head = report.split("## Per arm")[0]
    assert "> **No conclusion**: every arm was near chance" in head and "chance level" in head
    assert "**No best arm**" in report and "**Best arm**" not in report
    assert "No two arms to compare." in report


def test_a_skipped_weight_flip_is_divergence_and_an_unreached_arm_is_set_apart(tmp_path):
    """skip_nonfinite keeps weights at 1e37 (finite) but the held-out loss is inf: diverged. Plain
    SGD keeps no first moment: the optimizer-state fault never reaches it."""
    flip = [*QUICK, "--num-experiments", "1", "--optimizers", "adam", "--mitigations", "skip_nonfinite",
            "--fault", "bitflip", "--bit", "30", "--count", "64", "--layer", "net.0.weight",
            "--output-root", str(tmp_path / "flip")]
    assert main(flip) == 0
    results = read_json(next((tmp_path / "flip").iterdir()) / "experiment_000" / "results.json")
    assert results["arms"]["adam+skip_nonfinite"]["diverged"] is True
    state = [*QUICK, "--num-experiments", "2", "--optimizers", "adam", "sgd", "rmsprop", "--target", "optimizer_state",
             "--output-root", str(tmp_path / "state")]
    assert main(state) == 0
    report = (next((tmp_path / "state").iterdir()) / "final_report.md").read_text()
    assert "> **Never reached by the fault**: sgd" in report and "## Not reached by the fault" in report
    assert "| sgd | 2/2 | sgd keeps no first_moment" in report
    assert "| adam | sgd |" not in report  # sgd is not compared


def test_the_experiments_start_from_weights_pretrained_to_the_stated_accuracy(study):
    pretraining = read_json(study / "pretraining.json")
    assert pretraining["reached"] and pretraining["held_out_accuracy"] >= 0.4 and pretraining["optimizer"] == "adam"
    assert (study / "pretrained.pt").exists() and (study / "pretraining" / "metrics.jsonl").exists()
    report = (study / "final_report.md").read_text()
    assert f"pretrained once with adam (lr 0.01) for {pretraining['steps']} steps" in report
    config = read_json(study / "experiment_000" / "config.json")
    assert config["spec"]["plan"]["init_from"] == "study:pretrained.pt"
    results = read_json(study / "experiment_001" / "results.json")
    assert all(results["arms"][arm]["accuracy_pre"] > 0.3 for arm in ("adam", "sgd", "rmsprop"))
