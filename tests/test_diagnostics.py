import numpy as np
import pytest
import torch

from conftest import small_spec
from trainlab.engine import MemorySink, Trial
from trainlab.errors import SpecError
from trainlab.probes import blob_metrics
from trainlab.spec import load_spec
from trainlab import registries

BLOB_OPTIONS = {"eps": "auto", "eps_scale": 3.0, "min_samples": 10, "silhouette_sample": 2000, "gmm": True,
                "gmm_max_components": 5}


def tiny_denoiser(**changes) -> dict:
    spec = {"seed": 1, "task": {"name": "denoise-2layer", "dim": 32, "hidden": 16, "samples_per_epoch": 2000,
                                "n_val": 500, "l2_decoder": 0.03},
            "arms": [{"optimizer": "adam", "lr": 0.02}], "plan": {"epochs": 3, "batch_size": 200, "eval_every": 5},
            "probes": [{"kind": "blobs", "every": "epoch", "pairs": 300}]}
    from trainlab.spec import set_path

    for path, value in changes.items():
        set_path(spec, path.replace("__", "."), value)
    return load_spec(spec)


def blob_records(spec):
    sink = MemorySink()
    summary = Trial(spec, sink=sink).run()
    return [{k: v for k, v in r.items() if k != "seconds"} for r in sink.records if r.get("probe") == "blobs"], summary


def test_blob_metrics_repeat_exactly_with_the_same_seed_and_run_every_epoch():
    first, summary = blob_records(tiny_denoiser())
    second, _ = blob_records(tiny_denoiser())
    assert first == second
    assert [r["step"] for r in first] == [0, 10, 20, 30]  # 2000 / 200 = 10 steps per epoch
    assert summary["arms"]["adam"]["probes"]["blobs"]["step"] == 30
    third, _ = blob_records(tiny_denoiser(seed=2))
    assert third != first


def test_blob_metrics_find_three_blobs_and_are_scale_free():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [1.0, 0.5], [-1.0, -0.5]])
    x = np.concatenate([c + 0.08 * rng.standard_normal((n, 2)) for c, n in zip(centres, (3000, 1000, 1000))])
    out = blob_metrics(x, BLOB_OPTIONS, seed=0)
    assert out["clusters"] == 3 and out["silhouette"] > 0.6 and out["gmm_components"] == 3
    assert out["cluster_sizes"][0] > 2500 and np.allclose(out["centres"][0], [0, 0], atol=0.02)
    rescaled = blob_metrics(x * np.array([0.01, 100.0]), BLOB_OPTIONS, seed=0)
    for key in ("clusters", "noise", "silhouette", "cluster_sizes", "gmm_components"):
        assert rescaled[key] == pytest.approx(out[key]), key
    absolute = blob_metrics(x, {**BLOB_OPTIONS, "eps": 0.2}, seed=0)
    assert absolute["clusters"] == 3 and absolute["eps"] == 0.2
    assert abs(blob_metrics(x, BLOB_OPTIONS, 0)["correlation"] - np.corrcoef(x.T)[0, 1]) < 1e-12


def test_the_probe_pairs_encoder_row_with_decoder_column():
    spec = tiny_denoiser(probes=[{"kind": "blobs", "every": 1000, "pairs": 0}])
    trial = Trial(spec)
    probe = trial.hooks[0]
    probe.on_start(trial)
    x = probe.pairs(trial.arms[0])
    w1, w2 = trial.arms[0].model.fc1.weight, trial.arms[0].model.fc2.weight
    assert x.shape == (16 * 32, 2)
    i, j = 5, 7  # pair number i * d + j is (W1[i, j], W2[j, i])
    assert x[i * 32 + j].tolist() == [w1[i, j].item(), w2[j, i].item()]


def test_denoise_task_loss_and_support_recovery():
    task = registries().tasks.get("denoise-2layer").target
    opts = task.Options(dim=4, hidden=2, sparsity=1, lambda_on=16)
    target = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    output = torch.tensor([[0.5, 0.5, 0.0, -1.0]])
    assert task.loss(output, target, opts=opts).item() == pytest.approx(0.25 + 16 * 0.25 + 0 + 1)
    assert task.count_correct(torch.tensor([[0.9, 0.5, 0.0, 0.0]]), target)[0].item() == 0
    assert task.count_correct(torch.tensor([[0.1, 0.9, 0.0, 0.0]]), target)[0].item() == 1


def test_denoise_data_is_sparse_and_seeded():
    task = registries().tasks.get("denoise-2layer").target
    opts = task.Options(dim=64, hidden=8, sparsity=3, n_val=100)
    data = task.load(opts, seed=5)
    assert torch.equal(data.y_test.sum(1), torch.full((100,), 3.0))
    assert torch.equal(task.load(opts, seed=5).x_test, data.x_test)
    assert not torch.equal(task.load(opts, seed=6).x_test, data.x_test)
    noise = data.x_test - data.y_test
    assert abs(noise.var().item() - 0.005) < 0.001


def test_full_batch_gd_needs_a_fixed_training_set():
    with pytest.raises(SpecError, match="gd.*generates fresh samples"):
        Trial(tiny_denoiser(arms=[{"optimizer": "gd", "lr": 0.1}]))


def test_unknown_layers_for_the_blob_probe_are_named():
    with pytest.raises(SpecError, match="no parameter 'enc.weight'"):
        Trial(tiny_denoiser(probes=[{"kind": "blobs", "encoder": "enc.weight"}])).run()
    with pytest.raises(SpecError, match="must be \\[h, d\\] and \\[d, h\\]"):
        Trial(load_spec(small_spec(probes=[{"kind": "blobs", "encoder": "net.0.weight",
                                            "decoder": "net.2.weight"}]))).run()


def test_norms_probe_every_epoch():
    sink = MemorySink()
    Trial(load_spec(small_spec(probes=[{"kind": "norms", "every": "epoch"}], plan__batch_size=128)), sink=sink).run()
    steps = [r["step"] for r in sink.records if r.get("probe") == "norms" and r["arm"] == "sgd"]
    assert steps == [4, 8, 12, 16, 20]  # 512 / 128 = 4 steps per epoch
