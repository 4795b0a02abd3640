import json

import pytest

from conftest import small_spec
from trainlab import load, load_summaries
from trainlab.cli import main
from trainlab.errors import SpecError
from trainlab.spec import load_spec
from trainlab.study import expand, read_jsonl, run_study

ABLATION_GRID = {"arms.0.lr": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3], "arms.0.adamw_lr_ratio": [0.01, 0.05, 0.1, 0.2, 0.5],
                 "arms.0.momentum": [0.9, 0.95, 0.99], "arms.0.weight_decay": [0.01, 0.1, 0.5]}


def records_by_trial(study):
    meta = json.loads((study / "study.json").read_text())
    out = {}
    for trial in meta["trials"]:
        folder = study / "trials" / f"trial_{trial['index']:04d}"
        out[trial["key"]] = [{k: v for k, v in r.items() if k != "time_s"} for r in read_jsonl(folder / "metrics.jsonl")]
    return out


def artifacts(study):
    return sorted(str(p.relative_to(study)) for p in (study / "trials").rglob("*.pt"))


def test_inline_pool_and_local_ray_give_exactly_the_same_results(tmp_path):
    pytest.importorskip("ray")
    from trainlab.study.executor import ExecutorOptions

    spec = small_spec(sweep={"grid": {"arms.sgd.lr": [0.05, 0.1]}, "repeats": 2}, plan__steps=15,
                      events=[{"kind": "checkpoint", "steps": [15]}])
    studies = {}
    for kind in ("inline", "pool", "ray"):
        spec["output"] = {"root": str(tmp_path / kind)}
        studies[kind] = run_study(spec, quiet=True, executor=ExecutorOptions(kind=kind, workers=2))
    assert records_by_trial(studies["inline"]) == records_by_trial(studies["pool"]) == records_by_trial(studies["ray"])
    assert len(records_by_trial(studies["ray"])) == 4
    for study in studies.values():
        assert all((study / "trials" / f"trial_{i:04d}" / "summary.json").exists() for i in range(4))
        assert (study / "report.md").exists()
    # Ray workers train in scratch folders: their files reach the study through the driver
    assert artifacts(studies["ray"]) == artifacts(studies["inline"]) and len(artifacts(studies["ray"])) == 8
    import torch

    a, b = (torch.load(s / "trials/trial_0003/checkpoints/step_000015/adam.pt", weights_only=True) for s in
            (studies["inline"], studies["ray"]))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_max_trials_is_a_seeded_subset_that_reaches_every_hyperparameter():
    spec = load_spec(small_spec(arms=[{"optimizer": "muon", "lr": 0.02}],
                                sweep={"grid": ABLATION_GRID, "max_trials": 20}))
    plans = expand(spec)
    assert len(plans) == 20
    for path, values in ABLATION_GRID.items():
        seen = {p.overrides[path] for p in plans}
        assert len(seen) > 1, path
    assert [p.overrides for p in plans] != [p.overrides for p in expand({**spec, "sweep": {**spec["sweep"], "max_trials": None}})][:20]
    assert [p.key for p in expand(spec)] == [p.key for p in plans]  # the same subset every time
    other = load_spec({**spec, "sweep": {**spec["sweep"], "subset_seed": 99}})
    assert [p.key for p in expand(other)] != [p.key for p in plans]


def test_random_sweeps_draw_from_their_distributions_reproducibly():
    sweep = {"random": {"n": 30, "params": {"arms.sgd.lr": {"low": 1e-4, "high": 1e-1, "log": True},
                                            "plan.batch_size": {"low": 16, "high": 64, "integer": True},
                                            "arms.sgd.momentum": {"values": [0.0, 0.9]}}}}
    spec = load_spec(small_spec(sweep=sweep))
    plans = expand(spec)
    assert len(plans) == 30 and [p.overrides for p in plans] == [p.overrides for p in expand(spec)]
    lrs = [p.spec["arms"][0]["lr"] for p in plans]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs) and min(lrs) < 1e-3 < max(lrs) / 10  # log-uniform spread
    assert all(isinstance(p.spec["plan"]["batch_size"], int) and 16 <= p.spec["plan"]["batch_size"] <= 64 for p in plans)
    assert {p.spec["arms"][0]["momentum"] for p in plans} == {0.0, 0.9}
    with pytest.raises(SpecError, match="give either values, or low and high"):
        load_spec(small_spec(sweep={"random": {"n": 3, "params": {"arms.sgd.lr": {"low": 0.1}}}}))


def test_max_experiments_and_workers_from_the_command_line(tmp_path, capsys):
    import yaml

    spec = small_spec(sweep={"grid": {"arms.sgd.lr": [0.01, 0.02, 0.05, 0.1]}}, plan__steps=5)
    spec["output"] = {"root": str(tmp_path)}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--max-experiments", "2", "--workers", "2", "--quiet"]) == 0
    study = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(json.loads((study / "study.json").read_text())["trials"]) == 2
    assert main(["run", str(path), "--workers", "0"]) == 2
    assert "--workers: must be between 1 and 256" in capsys.readouterr().err
    assert main(["run", str(path), "--address", "10.0.0.1:6379"]) == 2
    assert "--address: only with --executor ray" in capsys.readouterr().err
    assert main(["run", str(path), "--executor", "dask"]) == 2
    assert "--executor" in capsys.readouterr().err


def test_the_report_says_which_hyperparameter_matters(tmp_path):
    spec = small_spec(arms=[{"name": "sgd", "optimizer": "sgd", "lr": 0.1}], plan__steps=40, plan__batch_size=64,
                      sweep={"grid": {"arms.sgd.lr": [0.0001, 0.01, 0.3], "plan.batch_size": [32, 64]}, "repeats": 2})
    spec["output"] = {"root": str(tmp_path)}
    study = run_study(spec, quiet=True)
    analysis = json.loads((study / "analysis.json").read_text())
    lr, batch = analysis["fields"]["arms.sgd.lr"], analysis["fields"]["plan.batch_size"]
    assert [row["value"] for row in lr["by_value"]] == ["0.0001", "0.01", "0.3"]
    assert lr["spearman"] > 0.5 and lr["importance"] > batch["importance"]
    assert analysis["importance_methods"] == ["fanova", "ped_anova"]  # Optuna's evaluators, beside the forest's
    assert lr["fanova"] > batch["fanova"] and abs(lr["fanova"] + batch["fanova"] - 1) < 1e-6
    assert analysis["recommendation"]["arms.sgd.lr"] != 0.0001
    report = (study / "report.md").read_text()
    assert "## Hyperparameters" in report and (study / "figures" / "effects.png").exists()
    assert "| fANOVA | PED-ANOVA |" in report and "Optuna's functional ANOVA" in report


def test_load_has_a_column_per_swept_field(tmp_path):
    spec = small_spec(sweep={"grid": {"arms.sgd.lr": [0.01, 0.1], "task.hidden": [[8], [16]]}}, plan__steps=3)
    spec["output"] = {"root": str(tmp_path)}
    study = run_study(spec, quiet=True)
    frame, summaries = load(study), load_summaries(study)
    trials = json.loads((study / "study.json").read_text())["trials"]
    for table in (frame, summaries):
        assert {"arms.sgd.lr", "task.hidden"} <= set(table.columns)
        for trial in trials:  # each row carries the value its trial used
            rows = table[table["trial"] == trial["index"]]
            assert (rows["arms.sgd.lr"] == trial["overrides"]["arms.sgd.lr"]).all()
            assert (rows["task.hidden"] == json.dumps(trial["overrides"]["task.hidden"])).all()
    means = summaries.groupby("arms.sgd.lr")["final_test_loss"].mean()
    assert list(means.index) == [0.01, 0.1] and means.notna().all()
    assert set(frame.groupby(["arms.sgd.lr", "task.hidden"]).groups) == {(lr, h) for lr in (0.01, 0.1)
                                                                       for h in ("[8]", "[16]")}
