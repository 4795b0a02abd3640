import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import small_spec
from trainlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write_spec(tmp_path, spec=None, name="spec.yaml") -> str:
    spec = spec or small_spec()
    spec.setdefault("output", {"root": str(tmp_path / "runs")})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


BAD_INPUTS = [
    # (arguments after `trainlab`, words the one-line message must contain)
    (["run", "{spec}", "--set", "task.name=mnist-xxl"], "task.name: unknown task 'mnist-xxl' (allowed:"),
    (["run", "{spec}", "--set", "arms.0.optimizer=lion"], "arms.0.optimizer: unknown optimizer 'lion'"),
    (["run", "{spec}", "--set", "plan.steps=abc"], "plan.steps: Input should be a valid integer"),
    (["run", "{spec}", "--set", "plan.steps=-3"], "plan.steps: Input should be greater than 0"),
    (["run", "{missing}"], "spec file"),
    (["run", "{malformed}"], "malformed YAML"),
    (["run", "{spec}", "--set", "plan.sampler=random"], "plan.sampler: Input should be 'shuffle'"),
    (["run", "{spec}", "--set", "arms.adam.lr=nan"], "arms.1.lr: Input should be a finite number"),
    (["run", "{spec}", "--set", "plan.learning_rate=0.1"], "plan.learning_rate: unknown field"),
    (["run", "{spec}", "--set", "plan.steps"], "--set 'plan.steps': expected path.to.field=value"),
    (["run", "{spec}", "--set", "arms.7.lr=0.1"], "arms.7: index 7 out of range"),
    (["run", "{spec}", "--set", "task.n_train=999999"], "task.n_train: 999999 requested"),
    (["run", "{spec}", "--set", "plan.batch_size=100000"], "plan.batch_size: batch_size 100000 is larger"),
    (["run", "{spec}", "--set", "plan.device=cuda:0"] if not __import__("torch").cuda.is_available() else
     ["run", "{spec}", "--set", "plan.device=tpu"], "plan.device"),
    (["run", "{spec}", "--set", "plan.init_from=/nonexistent.pt"], "checkpoint '/nonexistent.pt' not found"),
    (["run", "{spec}", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["run", "{spec}", "--data-dir", "/no/such/dir"], "--data-dir '/no/such/dir' is not a directory"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["resume", "{tmp}"], "is not a study directory"),
]


@pytest.mark.parametrize("argv, words", BAD_INPUTS, ids=[" ".join(a[2:] or a[:1]) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_naming_the_field(tmp_path, capsys, argv, words):
    malformed = tmp_path / "bad.yaml"
    malformed.write_text("arms: [unclosed\n")
    paths = {"spec": write_spec(tmp_path), "missing": str(tmp_path / "nope.yaml"), "malformed": str(malformed),
             "tmp": str(tmp_path)}
    code = main([a.format(**paths) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("trainlab: error: "), err
    assert words in err, err
    assert not (tmp_path / "runs").exists(), "bad input must not create a study"


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "trainlab", "run", write_spec(tmp_path), "--set", "arms.0.lr=-1"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == "trainlab: error: arms.0.lr: Input should be greater than 0"
    assert "Traceback" not in out.stderr


def test_run_report_and_validate_from_the_command_line(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert main(["run", spec, "--quiet", "--set", "plan.steps=12"]) == 0
    study = Path(capsys.readouterr().out.strip())
    assert (study / "report.md").exists() and (study / "figures" / "curves.png").exists()
    assert main(["report", str(study)]) == 0
    assert main(["resume", str(study), "--quiet"]) == 0
    assert main(["validate", spec, "--set", "sweep.repeats=3"]) == 0
    out = capsys.readouterr().out
    assert "beta2: 0.999" in out and "# 3 trial(s)" in out


def test_listing_commands(capsys):
    assert main(["tasks"]) == 0 and main(["optimizers"]) == 0
    out = capsys.readouterr().out
    for name in ["mnist-mlp", "mnist-cnn", "shakespeare-gpt", "sgd", "gd", "adam", "adamw", "rmsprop", "muon"]:
        assert f"\n{name}:" in "\n" + out
    assert "adamw_lr_ratio = 0.1" in out


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_is_valid(example):
    assert main(["validate", str(example)]) == 0
