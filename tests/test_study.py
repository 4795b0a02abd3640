import json
import os
import pickle

import pytest
import torch

from conftest import run_spec_until_killed, small_spec, strip_times
from trainlab import load, load_summaries, resume_study, run_study
from trainlab.errors import SpecError, UserError
from trainlab.engine import Trial, load_weights
from trainlab.spec import load_spec
from trainlab.study import read_jsonl


def study(tmp_path, **changes):
    spec = small_spec(**changes)
    spec["output"] = {"root": str(tmp_path / "runs")}
    return run_study(load_spec(spec), quiet=True)


def test_study_directory_layout_and_load(tmp_path):
    root = study(tmp_path, sweep={"repeats": 2})
    assert root.parent == tmp_path / "runs" and root.name.startswith("t-")
    meta = json.loads((root / "study.json").read_text())
    assert meta["spec"]["arms"][0]["name"] == "sgd" and meta["torch"] == torch.__version__
    assert len(meta["trials"]) == 2
    for i in range(2):
        folder = root / "trials" / f"trial_{i:04d}"
        assert {"config.json", "metrics.jsonl", "summary.json"} <= {p.name for p in folder.iterdir()}
    assert (root / "report.md").read_text().count("| sgd |") == 1
    assert (root / "figures" / "curves.png").stat().st_size > 10_000
    frame = load(root)
    assert set(frame["trial"]) == {0, 1} and set(frame["seed"]) == {3, 4}
    assert {"train", "eval"} <= set(frame["kind"])
    assert len(frame[(frame.kind == "train") & (frame.arm == "adam") & (frame.trial == 1)]) == 20
    summaries = load_summaries(root)
    assert len(summaries) == 4 and summaries["final_test_accuracy"].between(0, 1).all()


def test_reader_tolerates_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_report_is_rebuilt_from_stored_data(tmp_path):
    root = study(tmp_path)
    before = (root / "report.md").read_text()
    (root / "report.md").unlink()
    from trainlab import build_report

    assert build_report(root).read_text() == before


def test_resume_runs_only_unfinished_trials(tmp_path):
    root = study(tmp_path, sweep={"repeats": 3})
    complete = [strip_times(read_jsonl(root / "trials" / f"trial_{i:04d}" / "metrics.jsonl")) for i in range(3)]
    finished_at = (root / "trials" / "trial_0000" / "summary.json").stat().st_mtime_ns
    # simulate a crash inside trial 1: its summary is gone, its stream torn
    (root / "trials" / "trial_0001" / "summary.json").unlink()
    with open(root / "trials" / "trial_0001" / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "arm"')
    resume_study(root, quiet=True)
    assert (root / "trials" / "trial_0000" / "summary.json").stat().st_mtime_ns == finished_at
    for i in range(3):
        assert strip_times(read_jsonl(root / "trials" / f"trial_{i:04d}" / "metrics.jsonl")) == complete[i]


def test_resume_refuses_a_study_whose_spec_was_changed(tmp_path):
    root = study(tmp_path)
    meta = json.loads((root / "study.json").read_text())
    meta["spec"]["arms"][0]["lr"] = 0.5
    (root / "study.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="do not match"):
        resume_study(root, quiet=True)


def test_sigkill_mid_study_then_resume_gives_every_trial_exactly_once(tmp_path):
    spec = small_spec(sweep={"repeats": 4}, plan__steps=150, plan__eval_every=25)
    spec["output"] = {"root": str(tmp_path / "runs")}

    def second_trial_running() -> bool:  # kill once the first trial is done and the second is running
        done = list((tmp_path / "runs").glob("*/trials/trial_0000/summary.json"))
        running = list((tmp_path / "runs").glob("*/trials/trial_0001/metrics.jsonl"))
        return bool(done and running and running[0].stat().st_size > 0)

    run_spec_until_killed(spec, tmp_path, second_trial_running)
    (root,) = (tmp_path / "runs").iterdir()
    assert not (root / "trials" / "trial_0003" / "summary.json").exists()
    resume_study(root, quiet=True)
    summaries = [json.loads(p.read_text()) for p in sorted(root.glob("trials/*/summary.json"))]
    assert [s["index"] for s in summaries] == [0, 1, 2, 3]
    assert len({s["key"] for s in summaries}) == 4
    reference = study(tmp_path / "clean", sweep={"repeats": 4}, plan__steps=150, plan__eval_every=25)
    for i in range(4):
        name = f"trials/trial_{i:04d}/metrics.jsonl"
        records = read_jsonl(root / name)
        steps = [(r["kind"], r["arm"], r["step"]) for r in records]
        assert len(steps) == len(set(steps)), "a record was duplicated"
        assert strip_times(records) == strip_times(read_jsonl(reference / name))


def test_checkpoints_round_trip_and_start_a_trial(tmp_path):
    root = study(tmp_path, events=[{"kind": "checkpoint", "steps": [0, 10]}])
    path = root / "trials" / "trial_0000" / "checkpoints" / "step_000010" / "adam.pt"
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 10 and saved["arm"] == "adam" and "optimizer" in saved
    start = Trial(load_spec(small_spec(plan__init_from=str(path))))
    for arm in start.arms:
        state = arm.model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in saved["model"].items())
    initial = root / "trials" / "trial_0000" / "checkpoints" / "step_000000" / "sgd.pt"
    fresh = Trial(load_spec(small_spec()))
    assert all(torch.equal(fresh.arms[0].model.state_dict()[k], v) for k, v in load_weights(initial).items())


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": Exploit()}, fh)
    with pytest.raises(UserError, match="refused: not a weights-only"):
        load_weights(path)
    with pytest.raises(UserError, match="refused"):
        Trial(load_spec(small_spec(plan__init_from=str(path))))


def test_a_checkpoint_of_another_model_is_named(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(SpecError, match="plan.init_from: checkpoint does not fit"):
        Trial(load_spec(small_spec(plan__init_from=str(path))))
