"""Opening a study someone sent you runs none of its code: a study this user did not sign
(study/trust.py) imports no plugin module and puts no folder on sys.path unless --trust; the
user's own studies need no flag."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TRAINLAB = Path(sys.executable).with_name("trainlab")  # the command a user types: no folder of theirs on sys.path
PLANTED = "import os, pathlib\npathlib.Path(os.environ['PLANTED_MARKER']).write_text('ran')\n"
FAULTS = ["fault-recovery", "--task", "mnist-mlp", "--num-experiments", "1", "--steps-after-injection", "4",
          "--optimizers", "adam", "sgd", "--injection-window", "4:6", "--pretrain-accuracy", "0", "--quiet",
          "--set", "task.source=offline", "--set", "task.n_train=256", "--set", "task.n_test=128"]


def trainlab(*args, key: Path, marker: Path, cwd: Path, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRAINLAB_CONFIG": str(key), "PLANTED_MARKER": str(marker)}
    return subprocess.run([str(TRAINLAB), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def sent(tmp_path_factory):
    """A fault-recovery study made by someone else (their own key) with a plugin module, then
    doctored as an attacker would: the module planted inside the study, its folder named."""
    root = tmp_path_factory.mktemp("trust")
    sender = root / "sender"
    sender.mkdir()
    (sender / "planted.py").write_text(PLANTED)
    made = trainlab(*FAULTS, "--plugin", "planted", "--output-root", sender / "runs", key=root / "sender-key",
                    marker=root / "sender-marker", cwd=sender)
    assert made.returncode == 0, made.stderr
    (study,) = (sender / "runs").iterdir()
    return root, sender, study


def received_copy(sent, name: str) -> Path:
    root, _, study = sent
    copy = root / name
    shutil.copytree(study, copy)
    shutil.copy(root / "sender" / "planted.py", copy / "planted.py")
    meta = json.loads((copy / "study.json").read_text())
    meta["spec"]["plugin_path"] = [str(copy)]
    (copy / "study.json").write_text(json.dumps(meta))
    return copy


COMMANDS = [["report", "."], ["export", ".", "--to", "tensorboard"], ["resume", "."],
            ["monitor", ".", "--static", "--output", "MON"], ["diagnose", "."],
            ["fault", "replay", "experiment_000"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_received_study_runs_none_of_its_code(sent, command):
    root = sent[0]
    study = received_copy(sent, f"received-{command[0]}-{command[1]}")
    marker = root / f"marker-{command[0]}-{command[1]}"
    args = [str(root / "mon.png") if a == "MON" else a for a in command]
    done = trainlab(*args, key=root / "receiver-key", marker=marker, cwd=study)  # from inside it, as `cd study` would
    assert not marker.exists(), f"{command}: the study's module ran"
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("trainlab: error")]
    assert len(errors) <= 1
    if command[0] in ("resume", "fault"):  # these need the module: refused, in one line saying how to trust it
        assert done.returncode == 2 and "--trust" in errors[0], done.stderr


def test_the_users_own_studies_need_no_flag_and_trust_signs_a_received_one(sent):
    root, sender, study = sent
    own = trainlab("report", study, key=root / "sender-key", marker=root / "own-marker", cwd=sender)
    assert own.returncode == 0 and (root / "own-marker").exists(), own.stderr  # its plugin module loaded, no flag
    assert "--trust" not in own.stderr

    copy = received_copy(sent, "received-trusted")
    key, marker = root / "receiver-key", root / "trusted-marker"
    assert trainlab("report", copy, "--trust", key=key, marker=marker, cwd=root).returncode == 0
    assert marker.exists()
    marker.unlink()
    again = trainlab("report", copy, key=key, marker=marker, cwd=root)  # signed now: trusted without the flag
    assert again.returncode == 0 and marker.exists() and "--trust" not in again.stderr


def test_an_edited_study_json_is_no_longer_trusted(sent, tmp_path):
    root, sender, study = sent
    copy = tmp_path / "edited"
    shutil.copytree(study, copy)
    meta = json.loads((copy / "study.json").read_text())
    meta["spec"]["plugin_path"] = [str(copy)]
    (copy / "study.json").write_text(json.dumps(meta))  # the owner's key, but not the owner's bytes
    shutil.copy(sender / "planted.py", copy / "planted.py")
    done = trainlab("report", copy, key=root / "sender-key", marker=tmp_path / "m", cwd=copy)
    assert not (tmp_path / "m").exists() and "--trust" in done.stderr


def test_a_new_study_never_imports_from_the_current_folder_on_its_own(tmp_path):
    """`trainlab report` from inside a folder that holds a module of a study's plugin name: the
    current folder is not on sys.path (only --plugin modules are looked for there)."""
    (tmp_path / "planted.py").write_text(PLANTED)
    done = trainlab("plugins", "tasks", key=tmp_path / "key", marker=tmp_path / "m", cwd=tmp_path)
    assert done.returncode == 0 and not (tmp_path / "m").exists()
