"""Hostile input, generated: malformed and extreme specs, files and command-line flags.

Every input must end with exit code 0 (it was valid after all) or 2 with one line on stderr:
never a traceback, a hang or a half-written study. Training itself is replaced by a stub
that records the call: what is under test is everything before it (parsing, validation,
sweep expansion, the preflight that builds every trial, the study directory).
"""

import contextlib
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import small_spec
from trainlab.cli import main

EXAMPLES = int(os.environ.get("TRAINLAB_HYPOTHESIS_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

hostile_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
    st.sampled_from([0, -1, 2**63, -2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]),
    st.text(max_size=12), st.sampled_from(["../../etc/passwd", "/tmp/x", "{index}", "~", "", "1e-3", "nan"]))
hostile_values = st.one_of(hostile_scalars, st.lists(hostile_scalars, max_size=4),
                           st.dictionaries(st.text(max_size=8), hostile_scalars, max_size=3))
PATHS = ["name", "seed", "task", "task.name", "task.n_train", "task.n_test", "task.hidden", "task.pool",
         "task.classes", "task.source", "arms", "arms.0", "arms.0.lr", "arms.0.optimizer", "arms.0.momentum",
         "arms.0.name", "arms.1.lr", "arms.0.schedule", "arms.0.schedule.kind", "arms.0.mitigations",
         "arms.0.privacy", "plan", "plan.steps", "plan.epochs", "plan.batch_size", "plan.sampler", "plan.dtype",
         "plan.device", "plan.eval_every", "plan.grad_accumulation", "plan.init_from", "events", "probes",
         "sweep", "sweep.grid", "sweep.repeats", "sweep.seeds", "sweep.max_trials", "sweep.points", "sweep.random",
         "sweep.optuna", "output", "output.trial_dir", "output.report", "output.root", "unknown_key",
         "plan.unknown", "arms.0.unknown_hparam"]


@pytest.fixture
def no_training(monkeypatch):
    """Everything up to training runs for real; the trials themselves do not."""
    import trainlab.study.runner as runner

    calls = []
    monkeypatch.setattr(runner, "execute", lambda store, plans, *a, **k: calls.append(len(plans)))
    monkeypatch.setattr(runner, "finish", lambda store, quiet: None)
    return calls


def set_in(spec: dict, path: str, value) -> None:
    """Put `value` at a dotted path, making containers on the way (list items by index)."""
    node = spec
    parts = path.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return
            key = int(part)
        else:
            key = part
        if not isinstance(node[key] if isinstance(node, list) else node.get(key), (dict, list)):
            node[key] = {}
        node = node[key]
    last = parts[-1]
    if isinstance(node, list):
        if last.isdigit() and int(last) < len(node):
            node[int(last)] = value
    else:
        node[last] = value


def check_outcome(code: int, err: str, root: Path) -> None:
    assert code in (0, 2), f"exit {code}: {err}"
    assert "Traceback" not in err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("trainlab"), err
        assert not root.exists() or not any(root.iterdir()), "a study was written for bad input"


@SETTINGS
@given(mutations=st.lists(st.tuples(st.sampled_from(PATHS), hostile_values), min_size=1, max_size=3),
       as_json=st.booleans())
def test_malformed_specs_end_in_one_line_and_exit_2(tmp_path_factory, capsys, no_training, mutations, as_json):
    folder = tmp_path_factory.mktemp("spec")
    spec = small_spec()
    for path, value in mutations:
        set_in(spec, path, value)
    root = folder / "runs"
    spec.setdefault("output", {}) if isinstance(spec.get("output"), dict) else None
    if isinstance(spec.get("output"), dict) and "root" not in spec["output"]:
        spec["output"]["root"] = str(root)
    if as_json:
        import json

        path = folder / "spec.json"
        path.write_text(json.dumps(spec, allow_nan=True))
    else:
        path = folder / "spec.yaml"
        path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    capsys.readouterr()
    with contextlib.chdir(folder):  # a relative output.root ("~", "{index}") lands in the example's folder
        code = main(["run", str(path), "--quiet"])
    check_outcome(code, capsys.readouterr().err, root)


@SETTINGS
@given(blob=st.binary(max_size=200), suffix=st.sampled_from([".yaml", ".json", ".yml", ""]))
def test_arbitrary_bytes_as_a_spec_file(tmp_path_factory, capsys, no_training, blob, suffix):
    folder = tmp_path_factory.mktemp("bytes")
    path = folder / f"spec{suffix}"
    path.write_bytes(blob)
    capsys.readouterr()
    with contextlib.chdir(folder):
        code = main(["validate", str(path)])
    check_outcome(code, capsys.readouterr().err, folder / "runs")


flag_values = st.one_of(st.integers(min_value=-10**9, max_value=0).map(str), st.sampled_from(
    ["nan", "inf", "-inf", "-1", "0", "1e400", "x", "", "../..", "1:", ":", "5:1", "-3:-1", "\x00", "é"]))
COMMANDS = {
    "run": ["--workers", "--max-experiments", "--set", "--executor", "--address", "--data-dir"],
    "fault-recovery": ["--num-experiments", "--steps-after-injection", "--count", "--batch-size", "--eval-every",
                       "--injection-window", "--value-range", "--bit-range", "--bit", "--learning-rate", "--fault",
                       "--target", "--optimizers", "--mitigations", "--task", "--dtype", "--workers"],
    "ablation": ["--max-experiments", "--steps", "--batch-size", "--eval-every", "--preset", "--workers",
                 "--results-dir"],
    "dp-consistency": ["--modes", "--model", "--steps", "--dtype", "--batch-size", "--seq-len"],
    "dp-profile": ["--modes", "--model", "--batch-size", "--seq-len", "--dtype", "--rounds"],
    "profile-batch-size": ["--batch-sizes", "--epochs", "--memory-budget", "--budget-fraction"],
    "monitor": ["--interval", "--port", "--metrics"],
    "dynamics": ["--setup", "--stage", "--set", "--experiment", "--results-dir"],
}


@pytest.fixture
def nothing_heavy(monkeypatch, no_training):
    """Commands whose work is not a study get their heavy part replaced as well."""
    import trainlab.recipes.dp_profile as profile
    import trainlab.recipes.batch_size as profiler
    import trainlab.recipes.dp_consistency as dpc

    monkeypatch.setattr(dpc, "run_mode", lambda *a, **k: (_ for _ in ()).throw(SystemExit("stub reached")))
    monkeypatch.setattr(profile, "profile", lambda *a, **k: [])
    monkeypatch.setattr(profiler, "profile_batch_sizes", lambda *a, **k: [])


@SETTINGS
@given(command=st.sampled_from(sorted(COMMANDS)), data=st.data())
def test_hostile_flags_end_in_one_line_and_exit_2(tmp_path_factory, capsys, nothing_heavy, command, data):
    folder = tmp_path_factory.mktemp("flags")
    flags = data.draw(st.lists(st.sampled_from(COMMANDS[command]), min_size=1, max_size=3, unique=True))
    argv = [command]
    if command == "run":
        spec = small_spec()
        spec["output"] = {"root": str(folder / "runs")}
        (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
        argv.append(str(folder / "spec.yaml"))
    elif command == "profile-batch-size":
        argv += [str(folder / "missing.yaml")]
    elif command == "monitor":
        argv += [str(folder / "nowhere"), "--static"]
    elif command == "dynamics":
        argv += ["--output-root", str(folder / "runs")]
    for flag in flags:
        argv += [flag, data.draw(flag_values)]
    if command in ("fault-recovery", "ablation"):
        argv += ["--output-root", str(folder / "runs")]
    argv.append("--quiet") if command not in ("monitor", "dynamics") else None
    capsys.readouterr()
    try:
        with contextlib.chdir(folder):  # relative paths among the hostile values stay in the example's folder
            code = main(argv)
    except SystemExit as stop:  # argparse's own --help / stub reached: both fine, neither a traceback
        code = 0 if str(stop) == "stub reached" or stop.code == 0 else stop.code
    check_outcome(code, capsys.readouterr().err, folder / "runs")


# ---------------------------------------------------------------- structural attacks on the spec's text


@st.composite
def structural_attack(draw) -> tuple[str, list[str]]:
    """A spec text (and --set flags) carrying one of the attacks of the adversarial pass, sized
    by Hypothesis: alias bombs, self-referencing aliases, deep nesting (YAML, JSON, --set),
    integers of thousands of digits, NUL characters, duplicate keys, booleans for numbers."""
    base = yaml.safe_dump(small_spec(), sort_keys=False)
    kind = draw(st.sampled_from(["alias_bomb", "recursive_alias", "yaml_nesting", "json_nesting", "set_nesting",
                                 "big_int", "nul", "duplicate_key", "bool_for_number"]))
    field = draw(st.sampled_from(["task.hidden", "plan.steps", "arms.0.lr", "sweep.grid", "name", "output.root"]))
    section, _, leaf = field.partition(".")
    if kind == "alias_bomb":
        fan, depth = draw(st.integers(2, 12)), draw(st.integers(2, 12))
        anchors = ["a0: &a0 [" + ", ".join(["x"] * fan) + "]"]
        anchors += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, depth)]
        return "\n".join(anchors) + "\n" + base + f"extra_{section}: *a{depth - 1}\n", []
    if kind == "recursive_alias":
        return base.replace("task:\n", "task: &t\n  loop: *t\n", 1), []
    depth = draw(st.integers(60, 3000))
    if kind == "yaml_nesting":
        return base + f"nested: {'[' * depth}1{']' * depth}\n", []
    if kind == "json_nesting":
        import json

        spec = small_spec()
        return json.dumps(spec)[:-1] + f', "nested": {"[" * depth}1{"]" * depth}}}', []
    if kind == "set_nesting":
        return base, ["--set", f"{field}={'[' * depth}1{']' * depth}"]
    if kind == "big_int":
        digits = draw(st.integers(20, 6000))
        return base, ["--set", f"{field}={'9' * digits}"]
    if kind == "nul":
        return base, ["--set", f"{field}=\"a\\0b\""]
    if kind == "duplicate_key":
        return base.replace("seed: 3\n", "seed: 3\nseed: 4\n", 1), []
    return base, ["--set", f"{field}={draw(st.sampled_from(['true', 'false', 'yes', 'on']))}"]


@settings(max_examples=min(EXAMPLES, 120), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(attack=structural_attack())
def test_structural_spec_attacks_end_in_one_line(tmp_path_factory, capsys, no_training, attack):
    text, flags = attack
    folder = tmp_path_factory.mktemp("attack")
    path = folder / "spec.yaml"
    path.write_text(text)
    capsys.readouterr()
    with contextlib.chdir(folder):
        code = main(["run", str(path), *flags, "--quiet"])
    err = capsys.readouterr().err
    check_outcome(code, err, folder / "runs")
    assert code == 2, f"accepted: {flags} {text[-200:]!r}"  # none of these is a spec a researcher meant


# ---------------------------------------------------------------- store files of any shape


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    spec = small_spec(plan__steps=4, plan__eval_every=2, sweep={"repeats": 2})
    spec["output"] = {"root": str(tmp_path_factory.mktemp("store") / "runs")}
    from trainlab import run_study

    return run_study(spec, quiet=True)


json_values = st.recursive(hostile_scalars.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.sampled_from(
                                                       ["index", "key", "arms", "spec", "trials", "seed", "kind",
                                                        "arm", "step", "loss", "overrides", "x"]), inner, max_size=4)),
                           max_leaves=12)


@settings(max_examples=min(EXAMPLES, 60), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=st.sampled_from(["study.json", "trials/trial_0000/summary.json", "trials/trial_0000/config.json",
                               "trials/trial_0001/metrics.jsonl"]),
       content=st.one_of(json_values.map(lambda v: __import__("json").dumps(v)), st.binary(max_size=64),
                         st.integers(101, 3000).map(lambda depth: "[" * depth + "]" * depth)),  # past the bound
       command=st.sampled_from(["report", "load", "monitor", "resume"]))
def test_store_files_of_any_shape_never_end_in_a_traceback(tmp_path_factory, capsys, no_training, finished_study,
                                                            target, content, command):
    import shutil

    import trainlab

    study = tmp_path_factory.mktemp("copy") / finished_study.name
    shutil.copytree(finished_study, study)
    (study / target).write_bytes(content if isinstance(content, bytes) else content.encode())
    capsys.readouterr()
    if command == "load":
        try:
            trainlab.load(study), trainlab.load_summaries(study)
        except trainlab.UserError:
            pass
        return
    argv = {"report": ["report", str(study)], "resume": ["resume", str(study), "--quiet"],
            "monitor": ["monitor", str(study), "--static", "--output", str(study.parent / "m.png")]}[command]
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, f"exit {code}: {err}"
    if code == 2:
        assert len([line for line in err.splitlines() if line.startswith("trainlab: error")]) == 1, err


# ---------------------------------------------------------------- a damaged store: one line, exit 2, never a hang


class Hang(BaseException):
    """Not an Exception: nothing under test can catch it and pass for a clean exit."""


@contextlib.contextmanager
def within(seconds: float):
    """Fail instead of hanging: the alarm interrupts a blocked open() or read()."""
    import signal

    def expired(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def damaged(tmp_path, study: Path, damage) -> Path:
    """A copy of `study` with `damage(copy)` done to it."""
    import shutil

    copy = tmp_path / "copy" / study.name
    shutil.rmtree(copy.parent, ignore_errors=True)
    shutil.copytree(study, copy)
    damage(copy)
    return copy


def command_line(command: str, study: Path) -> list[str]:
    return {"report": ["report", str(study)], "resume": ["resume", str(study), "--quiet"],
            "diagnose": ["diagnose", str(study)],
            "monitor": ["monitor", str(study), "--static", "--output", str(study.parent / "m.png")]}[command]


def outcome(capsys, command: str, study: Path, seconds: float = 5) -> tuple[int, str]:
    """Exit code and stderr of a command on `study` (`load`: the Python API, a UserError as exit 2)."""
    import trainlab
    from trainlab.cli import configure_logging

    capsys.readouterr()
    with within(seconds):
        if command == "load":
            configure_logging(quiet=True)  # warnings to this test's stderr, as the CLI sends them
            try:
                trainlab.load(study), trainlab.load_summaries(study)
                code = 0
            except trainlab.UserError as err:
                print(f"trainlab: error: {err}", file=__import__("sys").stderr)
                code = 2
        else:
            code = main(command_line(command, study))
    return code, capsys.readouterr().err


def refused(code: int, err: str, *fragments: str) -> None:
    """Exit 2, one line on stderr, no traceback, and the line says what is wrong."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("trainlab: error: "), f"exit {code}: {err}"
    assert "Traceback" not in err and all(f in lines[0] for f in fragments), err


def clean(code: int, err: str) -> None:
    """The damage was tolerable: exit 0, perhaps warnings, no error and no traceback."""
    assert code == 0 and "Traceback" not in err and "error" not in err, f"exit {code}: {err}"


TRIAL = "trials/trial_0000"
DEEP = "[" * 5000 + "]" * 5000  # past the JSON parser's recursion limit


def replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("command", ["report", "monitor", "resume", "load"])
def test_a_fifo_for_a_metrics_stream_is_refused_at_once(tmp_path, capsys, finished_study, command):
    study = damaged(tmp_path, finished_study, lambda s: replace_with_fifo(s / TRIAL / "metrics.jsonl"))
    refused(*outcome(capsys, command, study, seconds=5), "metrics.jsonl is a FIFO, not a plain file")


@pytest.mark.parametrize("command", ["report", "monitor", "diagnose", "resume", "load"])
def test_json_nested_past_the_parser_in_study_json_is_one_line(tmp_path, capsys, finished_study, command):
    study = damaged(tmp_path, finished_study, lambda s: (s / "study.json").write_text('{"spec": ' + DEEP + "}"))
    code, err = outcome(capsys, command, study)
    if command == "monitor" and code == 0:  # the monitor still draws the streams it finds
        return clean(code, err)
    refused(code, err, "study.json", "nested deeper than")


@pytest.mark.parametrize("command", ["report", "monitor", "resume", "load"])
def test_a_metrics_line_nested_past_the_parser_is_skipped_as_garbled(tmp_path, capsys, finished_study, command):
    def deep_line(study):
        stream = study / TRIAL / "metrics.jsonl"
        stream.write_text(stream.read_text() + '{"kind": "eval", "arm": "sgd", "step": 2, "x": ' + DEEP + "}\n")

    study = damaged(tmp_path, finished_study, deep_line)
    clean(*outcome(capsys, command, study))
    if command == "load":
        import trainlab

        assert "x" not in trainlab.load(study).columns  # the deep line is not among the records


@pytest.fixture(scope="module")
def checkpoint_study(tmp_path_factory):
    """A tiny reference-3blob study with a checkpoint every epoch: what `diagnose` reads."""
    from trainlab import run_study
    from trainlab.spec import load_spec

    root = tmp_path_factory.mktemp("checkpoints") / "runs"
    spec = load_spec("reference-3blob", ["task.dim=32", "task.hidden=16", "task.samples_per_epoch=2000",
                                         "task.n_val=300", "plan.epochs=2", "plan.batch_size=200",
                                         "plan.eval_every=10", "probes.0.pairs=300", "probes.0.min_cluster_size=15",
                                         f"output.root={root}", "output.report=none"])
    return run_study(spec, quiet=True)


@pytest.mark.parametrize("where", ["study.json", f"{TRIAL}/config.json", f"{TRIAL}/summary.json",
                                   f"{TRIAL}/metrics.jsonl"])
def test_diagnose_on_deeply_nested_json(tmp_path, capsys, checkpoint_study, where):
    study = damaged(tmp_path, checkpoint_study, lambda s: (s / where).write_text('{"x": ' + DEEP + "}\n"))
    code, err = outcome(capsys, "diagnose", study, seconds=60)
    if where == "study.json":
        refused(code, err, "study.json", "nested deeper than")
    else:  # a trial's config or summary it cannot read: the analysis falls back to defaults
        clean(code, err)


def folder_for(path: Path) -> None:
    path.unlink()
    path.mkdir()


def file_for(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
    path.write_text("not a folder\n")


@pytest.mark.parametrize("command", ["report", "monitor", "resume", "load"])
@pytest.mark.parametrize("damage, says", [
    (lambda s: folder_for(s / TRIAL / "metrics.jsonl"), "metrics.jsonl is a folder, not a plain file"),
    (lambda s: folder_for(s / TRIAL / "summary.json"), "summary.json is a folder"),
    (lambda s: file_for(s / "trials" / "trial_0001"), "trial_0001 is "),
], ids=["metrics-a-folder", "summary-a-folder", "trial-folder-a-file"])
def test_a_folder_for_a_file_or_a_file_for_a_folder_is_one_line(tmp_path, capsys, finished_study, command, damage,
                                                                says):
    study = damaged(tmp_path, finished_study, damage)
    code, err = outcome(capsys, command, study)
    if command == "monitor" and code == 0:  # a summary the monitor only looks for (finished or not)
        return clean(code, err)
    refused(code, err, says)


def edit_summary(study: Path, **arm_fields) -> None:
    import json

    path = study / TRIAL / "summary.json"
    summary = json.loads(path.read_text())
    summary["arms"]["sgd"].update(arm_fields)
    path.write_text(json.dumps(summary))


@pytest.mark.parametrize("command", ["report", "resume", "load"])
def test_a_summary_number_given_as_text_or_a_list_is_missing_with_a_warning(tmp_path, capsys, finished_study,
                                                                            command):
    study = damaged(tmp_path, finished_study, lambda s: edit_summary(
        s, final_test_loss="abc", final_test_accuracy=[1], diverged="no", param_groups=[1], privacy="x"))
    code, err = outcome(capsys, command, study)
    clean(code, err)
    assert "final_test_loss is 'abc', not a number: taken as missing" in err
    if command == "load":
        import trainlab

        rows = trainlab.load_summaries(study)
        sgd = rows[(rows["trial"] == 0) & (rows["arm"] == "sgd")].iloc[0]
        assert math.isnan(sgd["final_test_loss"]) and math.isnan(sgd["final_test_accuracy"])
        assert not sgd["diverged"]
    elif command == "report":
        assert "| sgd |" in (study / "report.md").read_text()


def non_finite_values(study: Path) -> None:
    """NaN and infinity tokens (as a diverged run writes them), a value near the float maximum
    and an int past it, in every trial's metrics."""
    for stream in (study / "trials").glob("*/metrics.jsonl"):
        lines = stream.read_text().splitlines()
        tokens = ["NaN", "Infinity", "-Infinity", "1e308", "9" * 400]
        stream.write_text("\n".join(line.replace('"loss": ', f'"loss": {tokens[i % 5]}, "was": ', 1)
                                    for i, line in enumerate(lines)) + "\n")


@pytest.mark.parametrize("command", ["monitor", "report", "load"])
def test_nan_and_infinity_in_metrics_are_gaps_not_failures(tmp_path, capsys, finished_study, command):
    study = damaged(tmp_path, finished_study, non_finite_values)
    assert "NaN" in (study / TRIAL / "metrics.jsonl").read_text()
    clean(*outcome(capsys, command, study, seconds=60))
    if command == "monitor":
        assert (study.parent / "m.png").stat().st_size > 0


def test_report_on_a_full_disk_is_one_line(tmp_path, capsys, finished_study, monkeypatch):
    import errno

    study = damaged(tmp_path, finished_study, lambda s: None)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # every store write is fsynced before it is renamed into place
    refused(*outcome(capsys, "report", study, seconds=60), "No space left on device")
    assert not list(study.rglob("*.tmp")), "a failed write left its temporary file"


@pytest.mark.parametrize("output", ["/proc/nope.png", "{study}/study.json/m.png"], ids=["proc", "below-a-file"])
def test_monitor_output_in_an_unwritable_place_is_one_line(tmp_path, capsys, finished_study, output):
    study = damaged(tmp_path, finished_study, lambda s: None)
    capsys.readouterr()
    code = main(["monitor", str(study), "--static", "--output", output.format(study=study)])
    err = capsys.readouterr().err
    refused(code, err, "/proc" if output.startswith("/proc") else "study.json")


def fault_experiment(folder: Path, trial: Path, **files) -> Path:
    """An experiment folder made of a plain trial's config.json and the files a fault experiment
    adds, each replaceable by `files` (bytes, or a callable that damages the path)."""
    import json
    import shutil

    folder.mkdir(parents=True)
    shutil.copy(trial / "config.json", folder / "config.json")
    (folder / "results.json").write_text(json.dumps({"experiment": 0, "arms": {}}))
    (folder / "injection_config.json").write_text(json.dumps({"arms": {}}))
    for name, content in files.items():
        name = name.replace("_json", ".json").replace("_npz", ".npz")
        if callable(content):
            (folder / name).touch()
            content(folder / name)
        else:
            (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize("files, says", [
    ({}, "injects no fault"),
    ({"config_json": b"[1, 2]"}, "config.json is not a JSON object"),
    ({"config_json": b'{"index": 0, "spec": "/etc/passwd"}'}, "needs an integer index and a spec"),
    ({"config_json": b'{"index": "0", "spec": {}}'}, "needs an integer index and a spec"),
    ({"config_json": b'{"index": 0, "spec": {"name": 3}}'}, "config.json: its spec is not valid: name"),
    ({"results_json": DEEP.encode()}, "results.json cannot be read: JSON nested deeper than"),
    ({"results_json": b"{not json"}, "results.json cannot be read"),
    ({"results_json": folder_for}, "no results.json"),
    ({"injection_config_json": b'{"arms": [1]}'}, "injection_config.json: no record per arm"),
    ({"injection_batch_npz": b"PK\x03\x04 torn"}, "injection_batch.npz cannot be read as an injection batch"),
    ({"injection_batch_npz": replace_with_fifo}, "injection_batch.npz is a FIFO"),
], ids=["no-fault", "config-a-list", "spec-a-path", "index-text", "spec-invalid", "results-deep", "results-garbled",
        "results-a-folder", "injection-arms-a-list", "batch-torn", "batch-a-fifo"])
def test_fault_replay_checks_its_experiment_before_it_trains(tmp_path, capsys, finished_study, monkeypatch, files,
                                                             says):
    import trainlab.recipes.fault_recovery as fault_recovery

    def no_training(*args, **kwargs):
        raise AssertionError("replay trained before it had checked its inputs")

    monkeypatch.setattr(fault_recovery, "Trial", no_training)
    folder = fault_experiment(tmp_path / "lone" / "experiment_000", finished_study / TRIAL, **files)
    capsys.readouterr()
    with within(30):
        code = main(["fault", "replay", str(folder)])
    refused(code, capsys.readouterr().err, says)
