"""Optuna sweeps: proposals are reproducible, persisted, and a killed search resumes."""

import json

import pytest

from conftest import run_spec_until_killed, small_spec
from trainlab.errors import SpecError
from trainlab.spec import load_spec
from trainlab.study import resume_study, run_study

optuna = pytest.importorskip("optuna")

SEARCH = {"optuna": {"n_trials": 6, "batch": 2, "sampler": "tpe",
                     "params": {"arms.sgd.lr": {"low": 1e-3, "high": 0.5, "log": True},
                                "arms.sgd.momentum": {"values": [0.0, 0.9]}}}}


def search_spec(root, **changes):
    spec = small_spec(arms=[{"name": "sgd", "optimizer": "sgd", "lr": 0.1}], sweep=SEARCH, **{"plan__steps": 20, **changes})
    spec["output"] = {"root": str(root)}
    return spec


def proposals(study):
    return [t["overrides"] for t in json.loads((study / "study.json").read_text())["trials"]]


def test_an_optuna_search_runs_its_trials_and_keeps_its_storage(tmp_path):
    study = run_study(search_spec(tmp_path / "a"), quiet=True)
    trials = proposals(study)
    assert len(trials) == 6 and all(1e-3 <= t["arms.sgd.lr"] <= 0.5 for t in trials)
    assert len({t["arms.sgd.lr"] for t in trials}) == 6
    stored = optuna.load_study(study_name="t", storage=f"sqlite:///{study / 'optuna.db'}")
    assert [t.state.name for t in stored.trials] == ["COMPLETE"] * 6
    summaries = {s["index"]: s for s in map(json.loads, (p.read_text() for p in study.glob("trials/*/summary.json")))}
    for trial in stored.trials:  # Optuna was told each trial's held-out loss
        (index,) = trial.user_attrs["trainlab_trials"]
        assert trial.value == summaries[index]["arms"]["sgd"]["final_test_loss"]
    assert proposals(run_study(search_spec(tmp_path / "b"), quiet=True)) == trials  # seeded: the same search again
    assert "arms.sgd.lr" in (study / "report.md").read_text()


def test_a_killed_search_resumes_without_repeating_a_finished_trial(tmp_path):
    spec = search_spec(tmp_path / "runs", plan__steps=150, plan__eval_every=50)
    # kill inside the second batch: trial 2 finished, trial 3 running
    run_spec_until_killed(spec, tmp_path, lambda: bool(list((tmp_path / "runs").glob("*/trials/trial_0002/summary.json"))))
    (root,) = (tmp_path / "runs").iterdir()
    finished = {p: p.stat().st_mtime_ns for p in root.glob("trials/*/summary.json")}
    assert 3 <= len(finished) < 6
    resume_study(root, quiet=True)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items()), "a finished trial was run again"
    assert len(list(root.glob("trials/*/summary.json"))) == 6
    stored = optuna.load_study(study_name="t", storage=f"sqlite:///{root / 'optuna.db'}")
    assert sorted(t.state.name for t in stored.trials) == ["COMPLETE"] * 6
    # re-seeded per proposal: the resumed search proposes what an uninterrupted one does
    assert proposals(root) == proposals(run_study(spec | {"output": {"root": str(tmp_path / "clean")}}, quiet=True))


def test_optuna_specs_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(SpecError, match="cannot be combined with grid"):
        load_spec(small_spec(sweep={**SEARCH, "grid": {"arms.sgd.lr": [0.1]}}))
    with pytest.raises(SpecError, match="no arm named 'nope'"):
        load_spec(small_spec(sweep={"optuna": {**SEARCH["optuna"], "arm": "nope"}}))
    bogus = search_spec(tmp_path)
    bogus["sweep"]["optuna"] = {**SEARCH["optuna"], "params": {"arms.sgd.bogus": {"values": [1]}}}
    with pytest.raises(SpecError, match="bogus"):
        run_study(bogus, quiet=True)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
