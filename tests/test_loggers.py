"""Experiment trackers (TensorBoard, MLflow, W&B offline), read back with the tools' own readers
and compared with trainlab.load; export of an existing study; the package without its extras
or without fcntl; declared dependencies; logging verbosity; a closed pipe."""

import ast
import importlib.metadata
import json
import math
import os
import re
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import small_spec
from trainlab import load
from trainlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["run", str(ROOT / "examples" / "demo.yaml"), "--set", "plan.steps=20", "--set", "plan.eval_every=10",
        "--quiet"]
FIELDS = {"train": ["loss", "accuracy", "lr"], "eval": ["loss", "accuracy"]}


def study_in(folder: Path) -> Path:
    return next(p for p in folder.iterdir() if p.is_dir() and (p / "study.json").exists())


def expected_series(frame, trial: int, arm: str, kind: str, field: str) -> list[tuple[int, float]]:
    rows = frame[(frame["trial"] == trial) & (frame["arm"] == arm) & (frame["kind"] == kind)]
    return [(int(s), float(v)) for s, v in zip(rows["step"], rows[field])]


def same(series, expected, tolerance=1e-6) -> bool:
    """TensorBoard stores scalars as float32: equal to that precision, step by step."""
    return len(series) == len(expected) and all(
        s == es and math.isclose(v, ev, rel_tol=tolerance, abs_tol=1e-7) for (s, v), (es, ev) in zip(series, expected))


def arms_of(study: Path) -> list[str]:
    return [arm["name"] for arm in json.loads((study / "study.json").read_text())["spec"]["arms"]]


def check_tensorboard(study: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    frame, meta = load(study), json.loads((study / "study.json").read_text())
    for trial in meta["trials"]:
        folder = study / meta["spec"]["output"]["trial_dir"].format(index=trial["index"]) / "tensorboard"
        assert sorted(p.name for p in folder.iterdir()) == sorted(arms_of(study))
        for arm in arms_of(study):
            events = EventAccumulator(str(folder / arm), size_guidance={"scalars": 0})
            events.Reload()
            for kind, fields in FIELDS.items():
                for field in fields:
                    got = [(e.step, e.value) for e in events.Scalars(f"{kind}/{field}")]
                    assert same(got, expected_series(frame, trial["index"], arm, kind, field)), (trial, arm, field)
            assert events.Scalars("final/test_accuracy")  # the summary's numbers, for the HParams tab
            assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")  # the run's hyperparameters
    report = EventAccumulator(str(study / "tensorboard" / "report"), size_guidance={"images": 0})
    report.Reload()
    assert "figures/curves.png" in report.Tags()["images"]


def mlflow_client(study: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{study / 'mlflow.db'}")


def check_mlflow(study: Path) -> None:
    client, frame = mlflow_client(study), load(study)
    meta = json.loads((study / "study.json").read_text())
    experiment = client.get_experiment_by_name(study.name)
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "trainlab.trial" not in r.data.tags]
    children = [r for r in runs if "trainlab.trial" in r.data.tags]
    assert len(parent) == 1 and len(children) == len(meta["trials"]) * len(arms_of(study))  # no duplicates
    for run in children:
        trial, arm = int(run.data.tags["trainlab.trial"]), run.data.tags["trainlab.arm"]
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id and run.info.status == "FINISHED"
        spec_arm = next(a for a in meta["spec"]["arms"] if a["name"] == arm)
        assert float(run.data.params["arm.lr"]) == spec_arm["lr"] and run.data.params["arm.optimizer"] == spec_arm["optimizer"]
        for kind, fields in FIELDS.items():
            for field in fields:
                history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"{kind}/{field}"))
                assert same(history, expected_series(frame, trial, arm, kind, field), 1e-12), (trial, arm, field)
    artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert "report.md" in artifacts and {a.path for a in client.list_artifacts(parent[0].info.run_id, "figures")} \
        >= {"figures/curves.png"}


@pytest.mark.parametrize("workers", [1, 2])
def test_run_logs_to_tensorboard_and_mlflow_what_load_reads(tmp_path, workers):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    argv = [*DEMO, "--output-root", str(tmp_path), "--log", "tensorboard", "--log", "mlflow", "--workers", str(workers)]
    assert main(argv) == 0
    study = study_in(tmp_path)
    check_tensorboard(study)
    check_mlflow(study)


def test_export_gives_the_same_runs_and_replaces_them(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    assert main([*DEMO, "--set", "sweep.repeats=1", "--output-root", str(tmp_path)]) == 0
    study = study_in(tmp_path)
    assert not (study / "mlflow.db").exists() and not (study / "tensorboard").exists()
    for _ in range(2):  # a second export replaces the first: still one run per trial and arm
        assert main(["export", str(study), "--to", "tensorboard", "--to", "mlflow", "--quiet"]) == 0
        check_tensorboard(study)
        check_mlflow(study)
    assert "1 trial(s) logged to tensorboard, mlflow" in capsys.readouterr().out
    assert main(["export", str(study), "--to", "comet"]) == 2
    assert "--to: unknown logger 'comet' (allowed: mlflow, tensorboard, wandb)" in capsys.readouterr().err
    assert main(["export", str(study), "--to", "tensorboard", "--tracking-uri", "x"]) == 2
    assert "--tracking-uri: only with --to mlflow" in capsys.readouterr().err


def test_ray_trials_are_logged_when_their_files_come_back(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    argv = [*DEMO, "--set", "sweep.repeats=2", "--output-root", str(tmp_path), "--log", "tensorboard", "--log", "mlflow",
            "--executor", "ray", "--workers", "2"]
    assert main(argv) == 0
    study = study_in(tmp_path)
    check_tensorboard(study)
    check_mlflow(study)


def wandb_records(path: Path):
    """The records of a W&B offline run file: its LevelDB-style log of 32 KiB blocks, each chunk
    with a 7-byte header (crc, length, type: 1 full, 2 first, 3 middle, 4 last), after a 7-byte
    file header; every record a wandb_internal Record protobuf."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, chunks = 7, []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def test_wandb_offline_runs_hold_the_same_numbers(tmp_path):
    pytest.importorskip("wandb")
    assert main([*DEMO, "--set", "sweep.repeats=1", "--output-root", str(tmp_path), "--log", "wandb"]) == 0
    study = study_in(tmp_path)
    frame, runs = load(study), {}
    for path in (study / "wandb").glob("offline-run-*/run-*.wandb"):
        history, name, config = [], None, {}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                name = record.run.display_name
                config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
            elif kind == "history":
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
        runs[name] = (history, config)
    assert set(runs) == {f"trial_0000/{arm}" for arm in arms_of(study)} | {"report"}
    for arm in arms_of(study):
        history, config = runs[f"trial_0000/{arm}"]
        assert config["arm.name"] == arm and config["trial"] == 0
        for kind, fields in FIELDS.items():
            for field in fields:
                got = [(row["_step"], row[f"{kind}/{field}"]) for row in history if f"{kind}/{field}" in row]
                assert same(got, expected_series(frame, 0, arm, kind, field), 1e-12), (arm, field)
    assert any("figures/curves.png" in "".join(row) for row in runs["report"][0])


# ---------------------------------------------------------------- without extras, without fcntl

EXTRAS = ["optuna", "ray", "opacus", "transformers", "datasets", "torchvision", "triton", "tensorboard", "mlflow",
          "wandb"]


def run_hiding(modules: list[str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`trainlab argv` in a fresh interpreter where `modules` cannot be found, as on a machine
    that never installed them (importlib's path finder answers 'not found' for them)."""
    code = (
        "import importlib.machinery, sys\n"
        f"hidden = set({modules!r})\n"
        "class Hide(importlib.machinery.PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        "        return None if name.split('.')[0] in hidden else super().find_spec(name, path, target)\n"
        "sys.meta_path = [Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]\n"
        "from trainlab.cli import main\n"
        f"code = main({argv!r})\n"
        "leaked = sorted(hidden & {m.split('.')[0] for m in sys.modules})\n"
        "assert not leaked, leaked\n"
        "sys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_demo_runs_without_any_extra(tmp_path):
    argv = [*DEMO[:-1], "--set", "sweep.repeats=1", "--output-root", str(tmp_path)]
    proc = run_hiding(EXTRAS, argv, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = study_in(tmp_path)
    assert (study / "report.md").exists() and len(load(study)) > 0


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    spec = small_spec(output__loggers=["tensorboard"])
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    proc = run_hiding(["tensorboard"], ["validate", str(path)], tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "trainlab: error: output.loggers.0: logger 'tensorboard' needs the tensorboard package: "
        "pip install 'trainlab[tensorboard]'"]
    proc = run_hiding(["mlflow"], [*DEMO, "--output-root", str(tmp_path), "--log", "mlflow"], tmp_path)
    assert proc.returncode == 2 and "pip install 'trainlab[mlflow]'" in proc.stderr and not list(tmp_path.glob("demo-*"))


def test_a_study_runs_where_fcntl_does_not_exist(tmp_path):
    argv = [*DEMO[:-1], "--set", "sweep.repeats=1", "--output-root", str(tmp_path)]
    proc = run_hiding(["fcntl"], argv, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trainlab: warning: this platform has no file locks" in proc.stderr
    assert (study_in(tmp_path) / "report.md").exists()


# ---------------------------------------------------------------- declared dependencies


def imported_packages() -> dict[str, set[str]]:
    """Top-level third-party module -> the trainlab files importing it (any import statement)."""
    found: dict[str, set[str]] = {}
    source = ROOT / "src" / "trainlab"
    for path in source.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "trainlab":
                    found.setdefault(top, set()).add(str(path.relative_to(source)))
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


KNOWN = {"sklearn": "scikit-learn", "yaml": "pyyaml", "torchvision": "torchvision"}  # when not installed here


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {normalise(re.split(r"[<>=!~\[; ]", d)[0]) for d in project["dependencies"]}
    extras = {normalise(re.split(r"[<>=!~\[; ]", d)[0]) for ds in project["optional-dependencies"].values() for d in ds}
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, files in imported_packages().items():
        candidates = {normalise(d) for d in distributions.get(module, [])} or {normalise(KNOWN.get(module, module))}
        if not candidates & (core | extras):
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert "scikit-learn" in core and "filelock" in core


# ---------------------------------------------------------------- what trainlab says


def test_verbosity_and_a_closed_pipe(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(small_spec(plan__steps=2, output__root=str(tmp_path / "runs"))))

    def trainlab(*args):
        return subprocess.run([sys.executable, "-m", "trainlab", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)

    plain, quiet, verbose = trainlab("run", str(spec)), trainlab("run", str(spec), "--quiet"), \
        trainlab("run", str(spec), "-v")
    assert plain.returncode == quiet.returncode == verbose.returncode == 0
    assert "1 trial(s), 0 already finished" in plain.stderr and "report: " in plain.stderr
    assert quiet.stderr == ""
    assert "executor inline" in verbose.stderr and "executor inline" not in plain.stderr
    piped = subprocess.run(f"{sys.executable} -m trainlab validate {ROOT / 'examples' / 'demo.yaml'} | head -1",
                           shell=True, capture_output=True, text=True, env=env, timeout=300)
    assert piped.stdout == "name: demo\n" and piped.stderr == ""
