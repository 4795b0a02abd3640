import numpy as np
import pytest

from conftest import small_spec
from trainlab.engine import MemorySink, Trial
from trainlab.engine.ensemble import run_ensemble
from trainlab.errors import SpecError
from trainlab.spec import load_spec

OPTIMIZERS = [{"optimizer": "sgd", "lr": 0.05},
              {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
              {"optimizer": "sgd", "lr": 0.05, "momentum": 0.5, "dampening": 0.1},
              {"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-3, "amsgrad": True},
              {"optimizer": "adamw", "lr": 0.01, "schedule": {"kind": "cosine", "warmup_steps": 3}}]


def ensemble_spec(arm: dict, sampler: str = "shuffle", steps: int = 21) -> dict:
    return load_spec(small_spec(arms=[arm], plan__steps=steps, plan__sampler=sampler, plan__batch_size=48))


@pytest.mark.parametrize("arm", OPTIMIZERS, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items() if k != "lr"))
@pytest.mark.parametrize("sampler", ["shuffle", "replacement", "full"])
def test_batched_runs_equal_the_plain_trainer_run_by_run(arm, sampler, tmp_path):
    spec = ensemble_spec(arm, sampler)
    batched = run_ensemble(spec, 3, record_steps=[1, 10, 21], method="vmap", out_dir=tmp_path)
    looped = run_ensemble(spec, 3, record_steps=[1, 10, 21], method="loop")
    assert batched.method == "vmap" and looped.method == "loop"
    assert np.max(np.abs(batched.losses - looped.losses)) < 1e-10
    assert np.max(np.abs(batched.weights - looped.weights)) < 1e-10
    for key in ("loss", "accuracy"):
        assert np.max(np.abs(batched.eval_last[key] - looped.eval_last[key])) < 1e-10
    assert batched.weights.shape == (3, 3, 386)
    stored = np.load(tmp_path / "weights.npy", mmap_mode="r", allow_pickle=False)
    assert stored.dtype == np.float64 and np.array_equal(stored, batched.weights)


def test_each_run_is_the_plain_trainer_with_its_own_seed():
    spec = ensemble_spec({"optimizer": "sgd", "lr": 0.05})
    result = run_ensemble(spec, 3, method="vmap")
    assert result.seeds == [3, 4, 5]

    for r, seed in enumerate(result.seeds):
        sink = MemorySink()
        Trial({**spec, "seed": seed}, sink=sink).run()
        plain = [rec["loss"] for rec in sink.records if rec["kind"] == "train"]
        assert np.max(np.abs(np.array(plain) - result.losses[r])) < 1e-10
    assert not np.allclose(result.losses[0], result.losses[1])  # different seeds, different runs


def test_runs_from_one_checkpoint_share_initial_weights(tmp_path):
    import torch

    trial = Trial(ensemble_spec({"optimizer": "sgd", "lr": 0.05}))
    torch.save(trial.arms[0].model.state_dict(), tmp_path / "start.pt")
    spec = load_spec(small_spec(arms=[{"optimizer": "sgd", "lr": 0.05}], plan__init_from=str(tmp_path / "start.pt")))
    result = run_ensemble(spec, 4, record_steps=[1], method="vmap")
    assert np.allclose(result.eval_first["loss"], result.eval_first["loss"][0], rtol=0, atol=1e-15)
    assert not np.allclose(result.weights[0], result.weights[1])  # different batches from the first step


TASKS = {"gpt": {"name": "shakespeare-gpt", "n_chars": 1200},  # targets [B, 16]: one per token
         "cnn": {"name": "mnist-cnn", "source": "offline", "n_train": 256, "n_test": 64},  # BatchNorm
         "mlp": {"name": "mnist-mlp", "source": "offline", "n_train": 256, "n_test": 64, "hidden": [6, 5]}}


@pytest.mark.parametrize("task", TASKS, ids=str)
def test_batched_runs_of_every_model_kind_equal_plain_runs(task, tmp_path):
    spec = load_spec(small_spec(task=TASKS[task], arms=[{"optimizer": "sgd", "lr": 0.1, "momentum": 0.9}],
                                plan__steps=6, plan__batch_size=16, plan__sampler="replacement"))
    batched = run_ensemble(spec, 3, record_steps=[2, 6], method="vmap", out_dir=tmp_path)
    looped = run_ensemble(spec, 3, record_steps=[2, 6], method="loop")
    assert np.max(np.abs(batched.losses - looped.losses)) < 1e-10
    assert np.max(np.abs(batched.weights - looped.weights)) < 1e-10
    for key in ("loss", "accuracy"):
        assert np.max(np.abs(batched.eval_last[key] - looped.eval_last[key])) < 1e-10
    assert set(batched.buffers) == set(looped.buffers)
    for name, value in batched.buffers.items():  # BatchNorm running statistics of every run
        assert value.shape[0] == 3 and np.max(np.abs(value - looped.buffers[name])) < 1e-10, name
    assert not np.allclose(batched.losses[0], batched.losses[1])


def test_other_optimizers_fall_back_to_the_loop():
    spec = load_spec(small_spec(arms=[{"optimizer": "rmsprop", "lr": 0.01}], plan__steps=3))
    assert run_ensemble(spec, 2).method == "loop"
    with pytest.raises(SpecError, match="batched runs support sgd, adam, adamw"):
        run_ensemble(spec, 2, method="vmap")
    with pytest.raises(SpecError, match="exactly one arm"):
        run_ensemble(load_spec(small_spec()), 2)
