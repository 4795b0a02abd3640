import copy

import pytest
import torch

from conftest import needs_shakespeare, small_spec
from trainlab.engine import Hook, MemorySink, Trial
from trainlab.spec import load_spec


class Recorder(Hook):
    """Records, per arm, the weights before the first step and a fingerprint of every batch."""

    def __init__(self):
        self.initial, self.batches = {}, {}

    def before_step(self, trial, arm, step):
        if step == 1:
            self.initial[arm.name] = [p.detach().clone() for p in arm.model.parameters()]
        x, y = arm.batch
        self.batches.setdefault(arm.name, []).append((x.sum().item(), y.tolist()))


def run(spec, hooks=()):
    sink = MemorySink()
    trial = Trial(load_spec(spec), sink=sink)
    trial.hooks += list(hooks)
    return trial.run(), sink.records


def test_arms_start_from_identical_weights_and_see_identical_batches():
    recorder = Recorder()
    spec = small_spec(arms=[{"optimizer": "sgd", "lr": 0.1}, {"optimizer": "adam", "lr": 0.01},
                            {"optimizer": "muon", "lr": 0.02}, {"optimizer": "rmsprop", "lr": 0.001}])
    run(spec, [recorder])
    names = ["sgd", "adam", "muon", "rmsprop"]
    for name in names[1:]:
        assert all(torch.equal(a, b) for a, b in zip(recorder.initial["sgd"], recorder.initial[name]))
        assert recorder.batches[name] == recorder.batches["sgd"]
    assert len(recorder.batches["sgd"]) == 20
    assert len({tuple(y) for _, y in recorder.batches["sgd"]}) > 1  # batches do change between steps


@needs_shakespeare
def test_stochastic_layers_draw_the_same_numbers_in_every_arm():
    spec = small_spec(task={"name": "shakespeare-gpt", "n_chars": 600, "dropout": 0.5},
                      arms=[{"name": "a", "optimizer": "sgd", "lr": 0.0}, {"name": "b", "optimizer": "sgd", "lr": 0.0}])
    spec["arms"][0]["lr"] = spec["arms"][1]["lr"] = 1e-300  # practically no movement
    _, records = run(spec)
    train = [r for r in records if r["kind"] == "train"]
    for a, b in zip(train[0::2], train[1::2]):
        assert a["loss"] == b["loss"]


def test_gd_equals_sgd_on_the_whole_training_set():
    gd = small_spec(arms=[{"name": "x", "optimizer": "gd", "lr": 0.3, "momentum": 0.5}])
    full = small_spec(arms=[{"name": "x", "optimizer": "sgd", "lr": 0.3, "momentum": 0.5}], plan__sampler="full")
    _, a = run(gd)
    _, b = run(full)
    assert a == b  # bit-identical: same order, same sums
    batch = small_spec(arms=[{"name": "x", "optimizer": "sgd", "lr": 0.3, "momentum": 0.5}], plan__batch_size=512)
    _, c = run(batch)  # a shuffled full batch: the same mean, summed in another order
    for r, s in zip(a, c):
        assert r["step"] == s["step"] and r["loss"] == pytest.approx(s["loss"], rel=1e-12)


def test_same_spec_and_seed_give_bit_identical_metrics_in_float64():
    spec = small_spec(arms=[{"optimizer": "sgd", "lr": 0.1, "momentum": 0.9}, {"optimizer": "muon", "lr": 0.02},
                            {"optimizer": "adamw", "lr": 0.01}])
    first, a = run(spec)
    second, b = run(copy.deepcopy(spec))
    assert a == b
    for arm in first["arms"]:
        first["arms"][arm].pop("time_s"), second["arms"][arm].pop("time_s")
    assert first == second
    _, other_seed = run(small_spec(seed=4))
    assert other_seed != a


def test_a_diverging_arm_is_marked_and_the_others_go_on():
    spec = small_spec(arms=[{"name": "wild", "optimizer": "sgd", "lr": 1e300}, {"name": "calm", "optimizer": "sgd", "lr": 0.1}],
                      plan__steps=30)
    summary, records = run(spec)
    wild, calm = summary["arms"]["wild"], summary["arms"]["calm"]
    assert wild["diverged"] and 1 <= wild["diverged_step"] <= 5
    assert "non-finite" in wild["diverged_reason"] or "nan" in wild["diverged_reason"]
    assert not calm["diverged"]
    assert max(r["step"] for r in records if r["arm"] == "calm" and r["kind"] == "train") == 30
    events = [r for r in records if r["kind"] == "event"]
    assert events == [{"kind": "event", "event": "diverged", "arm": "wild", "step": wild["diverged_step"],
                       "reason": wild["diverged_reason"]}]


def test_evaluation_cadence_and_epochs():
    _, records = run(small_spec(plan__eval_every=7))
    steps = sorted({r["step"] for r in records if r["kind"] == "eval"})
    assert steps == [0, 7, 14, 20]
    trial = Trial(load_spec(small_spec(plan={"epochs": 2.5, "batch_size": 100, "dtype": "float64"})))
    assert trial.total_steps == 13  # ceil(2.5 * 5)


@needs_shakespeare
def test_language_model_metrics_include_perplexity():
    spec = small_spec(task={"name": "shakespeare-gpt"}, arms=[{"optimizer": "adam", "lr": 0.01}], plan__steps=5)
    summary, records = run(spec)
    final = [r for r in records if r["kind"] == "eval"][-1]
    assert final["perplexity"] == pytest.approx(torch.tensor(final["loss"]).exp().item())
    assert isinstance(summary["arms"]["adam"]["sample"], str)


def test_float32_and_cnn_on_cpu_run():
    summary, _ = run(small_spec(task={"name": "mnist-cnn", "source": "offline", "n_train": 256, "n_test": 128},
                                plan__dtype="float32", plan__steps=5))
    assert summary["steps"] == 5 and not summary["arms"]["sgd"]["diverged"]
