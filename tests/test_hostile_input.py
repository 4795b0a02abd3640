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
       content=st.one_of(json_values.map(lambda v: __import__("json").dumps(v)), st.binary(max_size=64)),
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
