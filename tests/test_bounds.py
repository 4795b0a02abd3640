"""Bounds and odd inputs ("Reliability, round three"): plugins that exit at import, schedules
over huge plans, event steps outside the plan, monitor flags, spec paths that are no file.
Each bad input ends in exit 2 and one line naming the field or flag, before anything is written."""

import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import small_spec
from trainlab.cli import main
from trainlab.engine import Trial
from trainlab.engine.hooks import Steps
from trainlab.plugin import import_module
from trainlab.spec import load_spec


def one_line_error(capsys, *names: str) -> str:
    """The single stderr line of a refused input; it names each of `names`."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("trainlab: error: "), err
    for name in names:
        assert name in lines[0], err
    return lines[0]


def write_spec(folder: Path, spec: dict) -> Path:
    spec.setdefault("output", {})["root"] = str(folder / "runs")
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def no_training(monkeypatch):
    """Everything up to training runs for real (preflight included); the trials do not."""
    import trainlab.study.runner as runner

    monkeypatch.setattr(runner, "execute", lambda *a, **k: None)
    monkeypatch.setattr(runner, "finish", lambda *a, **k: None)


def nothing_written(folder: Path) -> bool:
    return not (folder / "runs").exists() or not any((folder / "runs").iterdir())


# ---------------------------------------------------------------- plugins


@pytest.mark.parametrize("body, shown", [("import sys\nsys.exit(0)\n", "sys.exit(0)"),
                                         ("raise SystemExit(3)\n", "sys.exit(3)"),
                                         ("raise SystemExit\n", "sys.exit(None)"),
                                         ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here")])
def test_a_plugin_that_exits_or_raises_at_import_is_one_line_naming_it(tmp_path, capsys, no_training, body, shown):
    name = f"exits_{abs(hash(body)) % 10**8}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(body)
    path = write_spec(tmp_path, {**small_spec(), "plugins": [name]})
    capsys.readouterr()
    assert main(["run", str(path), "--quiet"]) == 2
    one_line_error(capsys, repr(name), shown)
    assert nothing_written(tmp_path)


def test_ctrl_c_while_a_plugin_imports_still_stops(tmp_path, monkeypatch):
    (tmp_path / "interrupts_at_import.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        import_module("interrupts_at_import")


# ---------------------------------------------------------------- lazy schedules


def test_steps_answer_as_the_set_of_every_step_did():
    lazy, eager = Steps([0, 7, 13]), {0, 7, 13}
    lazy.update(range(0, 101, 6))
    eager |= set(range(0, 101, 6))
    lazy.add(100)
    eager.add(100)
    assert [s for s in range(-3, 110) if s in lazy] == sorted(s for s in eager if -3 <= s < 110)
    assert not Steps() and Steps(range(0, 10**12, 1)) and 10**12 - 1 in Steps(range(0, 10**12))


def test_checkpoint_and_fault_cadences_over_1e10_steps_stay_small():
    spec = load_spec(small_spec(**{"plan.steps": 10**10, "events": [
        {"kind": "checkpoint", "every": 1, "final": True},
        {"kind": "fault", "step": 5, "tensor": "net.0.weight", "indices": [0], "fault": "zero", "eval_every_after": 1}]}))
    trial = Trial(spec)  # no artifact_dir: the step-0 checkpoint is not written
    started = time.perf_counter()
    for hook in trial.hooks:
        hook.on_start(trial)
    assert time.perf_counter() - started < 5  # a set of 10**10 steps would not even fit in memory
    checkpoint = trial.hooks[0]
    assert all(s in checkpoint.steps for s in (0, 1, 12345, 10**10)) and 10**10 + 1 not in checkpoint.steps
    assert all(s in trial.eval_steps for s in (4, 5, 6, 10**10 - 1)) and 3 not in trial.eval_steps


# ---------------------------------------------------------------- bounds at validation


@pytest.mark.parametrize("events, field, message", [
    ([{"kind": "checkpoint", "steps": [0, 500]}], "events.0.steps", "step 500 is past the end of the plan (0..200)"),
    ([{"kind": "checkpoint", "steps": [-1]}], "events.0.steps", "step -1 is before the start of the plan (0..200)"),
    ([{"kind": "checkpoint", "final": True}, {"kind": "fault", "step": 201, "tensor": "net.0.weight",
                                              "indices": [0], "fault": "zero"}],
     "events.1.step", "step 201 is past the end of the plan (0..200)"),
])
def test_event_steps_outside_the_plan_are_refused(tmp_path, capsys, no_training, events, field, message):
    path = write_spec(tmp_path, small_spec(**{"plan.steps": 200, "events": events}))
    for command in (["validate", str(path)], ["run", str(path), "--quiet"]):
        capsys.readouterr()
        assert main(command) == 2
        assert one_line_error(capsys, field) == f"trainlab: error: {field}: {message}"
    assert nothing_written(tmp_path)


def test_steps_of_a_plan_in_epochs_are_checked_when_its_length_is_known(tmp_path, capsys, no_training):
    # 512 samples in batches of 32: 16 steps per epoch, so 2 epochs end at step 32
    spec = small_spec(**{"events": [{"kind": "checkpoint", "steps": [32, 33]}]})
    spec["plan"] = {**spec["plan"], "steps": None, "epochs": 2}
    path = write_spec(tmp_path, spec)
    capsys.readouterr()
    assert main(["run", str(path), "--quiet"]) == 2
    one_line_error(capsys, "events.0.steps: step 33 is past the end of the plan (0..32)")
    assert nothing_written(tmp_path)
    spec["events"][0]["steps"] = [0, 32]
    assert main(["run", str(write_spec(tmp_path, spec)), "--quiet"]) == 0


def test_a_sweep_over_the_plan_length_is_checked_trial_by_trial(tmp_path, capsys, no_training):
    spec = small_spec(**{"plan.steps": 20, "events": [{"kind": "checkpoint", "steps": [500]}],
                         "sweep": {"grid": {"plan.steps": [600, 1000]}}})
    assert main(["validate", str(write_spec(tmp_path, spec))]) == 0  # every trial reaches step 500
    spec["sweep"]["grid"]["plan.steps"] = [1000, 100]
    capsys.readouterr()
    assert main(["validate", str(write_spec(tmp_path, spec))]) == 2
    one_line_error(capsys, "sweep (events.0.steps): step 500 is past the end of the plan (0..100)")


@pytest.mark.parametrize("spec", ["reference-3blob", str(Path(__file__).parents[1] / "examples" / "mnist-idx.yaml")])
def test_shipped_specs_with_events_still_validate(spec, capsys):
    assert main(["validate", spec]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------- monitor flags


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    from trainlab import run_study

    spec = small_spec(**{"plan.steps": 4, "plan.eval_every": 2})
    spec["output"] = {"root": str(tmp_path_factory.mktemp("monitor") / "runs")}
    return run_study(spec, quiet=True)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-2", "1e10"])
def test_monitor_interval_must_be_a_finite_positive_number(finished_study, capsys, value):
    capsys.readouterr()
    assert main(["monitor", str(finished_study), "--static", f"--interval={value}"]) == 2
    one_line_error(capsys, "--interval", "finite positive")


def test_monitor_metrics_must_be_recorded_by_the_study(finished_study, capsys, tmp_path):
    capsys.readouterr()
    assert main(["monitor", str(finished_study), "--static", "--metrics", "loss", "nosuch"]) == 2
    line = one_line_error(capsys, "--metrics", "'nosuch'")
    assert line.endswith("(recorded: accuracy, loss, lr)"), line
    out = tmp_path / "panels.png"
    assert main(["monitor", str(finished_study), "--static", "--metrics", "loss", "--output", str(out)]) == 0
    assert out.exists()


# ---------------------------------------------------------------- validate PATH


def test_validate_of_a_folder_or_a_device_says_what_it_is(tmp_path, capsys):
    for path, what in ((tmp_path, "is a directory"), (Path(os.devnull), "is a device")):
        capsys.readouterr()
        assert main(["validate", str(path)]) == 2
        one_line_error(capsys, repr(str(path)), what)


def test_validate_of_a_fifo_says_so_without_waiting_for_a_writer(tmp_path, capsys):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    codes = []
    worker = threading.Thread(target=lambda: codes.append(main(["validate", str(fifo)])), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # it opened the FIFO: give it an end of file so the test process can go on
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=10)
        pytest.fail("validate blocked opening a named pipe")
    assert codes == [2]
    one_line_error(capsys, repr(str(fifo)), "is a named pipe (FIFO)")
