import json

import pytest

from conftest import small_spec
from trainlab.errors import SpecError, UserError
from trainlab.spec import load_spec, parse_set
from trainlab.study import expand


def test_resolved_spec_fills_every_default():
    spec = load_spec(small_spec())
    assert spec["task"]["pool"] == 6 and spec["task"]["hidden"] == [8]
    assert spec["arms"][1]["beta2"] == 0.999
    assert spec["arms"][0]["nesterov"] is False
    assert spec["plan"]["sampler"] == "shuffle"
    assert spec["arms"][0]["schedule"]["kind"] == "constant"
    assert load_spec(spec) == spec  # resolving is idempotent


def test_set_overrides_by_index_and_by_arm_name():
    spec = load_spec(small_spec(), ["arms.adam.lr=0.5", "arms.0.momentum=0.5", "plan.steps=7", "task.hidden=[4, 4]"])
    assert spec["arms"][1]["lr"] == 0.5 and spec["arms"][0]["momentum"] == 0.5
    assert spec["plan"]["steps"] == 7 and spec["task"]["hidden"] == [4, 4]


def test_set_values_are_yaml_scalars():
    assert parse_set("a.b=1e-3") == ("a.b", 1e-3)
    assert parse_set("a=true") == ("a", True)
    assert parse_set("a=adam") == ("a", "adam")


def test_json_and_yaml_files_load_the_same(tmp_path):
    import yaml

    (tmp_path / "s.json").write_text(json.dumps(small_spec()))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(small_spec()))
    assert load_spec(tmp_path / "s.json") == load_spec(tmp_path / "s.yaml")


@pytest.mark.parametrize("changes, path, words", [
    ({"task__name": "mnist-xl"}, "task.name", "unknown task 'mnist-xl' (allowed: denoise-2layer, hf-text, mnist-cnn, mnist-mlp"),
    ({"arms__0__optimizer": "adagrad"}, "arms.0.optimizer", "unknown optimizer 'adagrad' (allowed: adam, adamw, gd, muon"),
    ({"plan__steps": "many"}, "plan.steps", "integer"),
    ({"plan__steps": -5}, "plan.steps", "greater than 0"),
    ({"arms__1__lr": 0}, "arms.1.lr", "greater than 0"),
    ({"arms__1__lr": float("nan")}, "arms.1.lr", "finite"),
    ({"plan__sampler": "random"}, "plan.sampler", "'shuffle', 'replacement', 'full' or 'poisson'"),
    ({"plan__dtype": "float16"}, "plan.dtype", "'float32' or 'float64'"),
    ({"plan__stepz": 3}, "plan.stepz", "unknown field (allowed here: batch_size"),
    ({"arms__0__momentun": 0.9}, "arms.0.momentun", "unknown field (allowed here: dampening, momentum"),
    ({"task__hidden": [8, -1]}, "task", "every width must be positive"),
    ({"arms__1__name": "sgd"}, "arms", "duplicate arm name 'sgd'"),
    ({"plan__device": "gpu"}, "plan.device", "'cpu', 'cuda'"),
    ({"sweep__grid": {"arms.sgd.lr": []}}, "sweep.grid", "no values"),
    ({"probes": [{"kind": "hessian"}]}, "probes.0.kind", "unknown probe 'hessian'"),
    ({"events": [{"kind": "checkpoint"}]}, "events.0", "steps, every or final"),
])
def test_bad_specs_name_the_field(changes, path, words):
    with pytest.raises(SpecError) as info:
        load_spec(small_spec(**changes))
    assert info.value.path.startswith(path), info.value
    assert words in info.value.message, info.value.message


def test_bad_grid_values_are_caught_before_running():
    spec = load_spec(small_spec(sweep={"grid": {"arms.adam.lr": [0.1, -1.0]}}))
    with pytest.raises(SpecError, match=r"sweep \(arms.1.lr\): Input should be greater than 0"):
        expand(spec)


def test_grid_times_seeds_and_stable_keys():
    spec = load_spec(small_spec(sweep={"grid": {"arms.adam.lr": [0.1, 0.01], "plan.batch_size": [16, 32]},
                                       "repeats": 3}))
    plans = expand(spec)
    assert len(plans) == 12
    assert plans[0].overrides == {"arms.adam.lr": 0.1, "plan.batch_size": 16}
    assert [p.seed for p in plans[:3]] == [3, 4, 5]
    assert plans[5].spec["arms"][1]["lr"] == 0.1 and plans[5].spec["plan"]["batch_size"] == 32
    assert len({p.key for p in plans}) == 12
    assert [p.key for p in expand(spec)] == [p.key for p in plans]


@pytest.mark.parametrize("text, words", [
    ("task: [unclosed", "malformed YAML"),
    ("- just\n- a list\n", "must hold a mapping"),
])
def test_bad_files(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=words):
        load_spec(path)


def test_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(UserError, match="not UTF-8"):
        load_spec(path)
    with pytest.raises(UserError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
