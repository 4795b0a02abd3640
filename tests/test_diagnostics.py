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


def blob_study(tmp_path, **changes):
    """The reference-3blob preset at a size that runs in seconds, with checkpoints every epoch."""
    import yaml
    from trainlab.cli import main

    sets = ["task.dim=32", "task.hidden=16", "task.samples_per_epoch=2000", "task.n_val=300", "plan.epochs=3",
            "plan.batch_size=200", "plan.eval_every=10", "probes.0.pairs=300", "probes.0.min_cluster_size=15",
            f"output.root={tmp_path}", *[f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                         for k, v in changes.items()]]
    assert main(["run", "reference-3blob", "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    (study,) = [p for p in tmp_path.iterdir() if (p / "study.json").exists()]
    return study


def test_offline_diagnose_reproduces_the_probe_and_reports_both_clusterings(tmp_path, capsys):
    import json

    from trainlab.analysis.blobs import diagnose
    from trainlab.cli import main
    from trainlab.study.store import read_jsonl

    study = blob_study(tmp_path)
    trial = study / "trials" / "trial_0000"
    saved = sorted(p.parent.name for p in trial.glob("checkpoints/step_*/adam.pt"))
    assert saved == ["step_000000", "step_000010", "step_000020", "step_000030"]  # every epoch, with the start
    frame, last = diagnose(study, keep_pairs=True)
    # the run's (HDBSCAN 15), the original study's DBSCAN, scale-free DBSCAN, HDBSCAN at its default 25
    assert set(frame["clustering"]) == {"run", "seed", "auto", "hdbscan"} and len(frame) == 16 and len(last) == 4
    online = {r["step"]: r for r in read_jsonl(trial / "metrics.jsonl") if r.get("probe") == "blobs"}
    for _, row in frame[frame["clustering"] == "run"].iterrows():  # same pairs, same DBSCAN: same numbers
        probe = online[row["step"]]
        assert (row["clusters"], row["noise"], row["cluster_sizes"]) == (probe["clusters"], probe["noise"],
                                                                         probe["cluster_sizes"])
        assert row["correlation"] == pytest.approx(probe["correlation"], abs=1e-12)
        if probe["silhouette"] is not None:
            assert row["silhouette"] == pytest.approx(probe["silhouette"], abs=1e-12)
        assert np.isnan(row["eps"]) and probe["eps"] is None  # HDBSCAN has no radius
    assert list(frame["epoch"].drop_duplicates()) == [0.0, 1.0, 2.0, 3.0]
    assert (frame[frame["clustering"] == "seed"]["eps"] == 0.1).all()

    report = (study / "report.md").read_text()
    assert "## Blob diagnostics" in report and "eps 0.1, min_samples 50" in report
    assert "HDBSCAN, min_cluster_size 15" in report and "auto eps (3 x median), min_samples 10" in report
    assert (study / "figures" / "blobs.png").stat().st_size > 0 and (study / "figures" / "blob_pairs.png").exists()
    results = json.loads((trial / "results.json").read_text())
    history = results["training_history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3] and results["config"]["task"]["dim"] == 32
    assert history[-1]["diagnostics"]["n_clusters"] == online[30]["clusters"]
    assert history[-1]["val_loss"] == next(r["loss"] for r in read_jsonl(trial / "metrics.jsonl")
                                           if r.get("kind") == "eval" and r["step"] == 30)
    train = [r["loss"] for r in read_jsonl(trial / "metrics.jsonl") if r.get("kind") == "train" and 21 <= r["step"] <= 30]
    assert history[-1]["train_loss"] == pytest.approx(np.mean(train))

    capsys.readouterr()
    checkpoint = trial / "checkpoints" / "step_000030" / "adam.pt"
    assert main(["diagnose", str(checkpoint), "--eps", "0.05", "--min-samples", "8", "--output",
                 str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "eps 0.05, min_samples 8" in out and "eps 0.1, min_samples 50" in out and "auto eps" in out
    table = (tmp_path / "out" / "blobs.csv").read_text().splitlines()
    assert len(table) == 1 + 5  # one checkpoint, five clusterings


def test_diagnose_refuses_in_one_line(tmp_path, capsys):
    from trainlab.cli import main

    assert main(["diagnose", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path)]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    torch.save({"model": {"w": torch.zeros(3, 4)}}, tmp_path / "other.pt")
    assert main(["diagnose", str(tmp_path / "other.pt")]) == 2
    err = capsys.readouterr().err
    assert "'fc1.weight'" in err and "--encoder" in err and len(err.strip().splitlines()) == 1
    assert main(["diagnose", str(tmp_path / "other.pt"), "--encoder", "w", "--decoder", "w"]) == 2
    assert "must be [h, d] and [d, h]" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path / "other.pt"), "--eps", "-1"]) == 2
    assert "--eps" in capsys.readouterr().err


def test_checkpoint_event_needs_a_step_and_saves_every_epoch_and_the_last(tmp_path):
    spec = tiny_denoiser(events=[{"kind": "checkpoint", "every": 7, "final": True, "optimizer": False}])
    Trial(spec, artifact_dir=tmp_path).run()
    assert sorted(p.parent.name for p in tmp_path.glob("checkpoints/*/*.pt")) == [
        "step_000000", "step_000007", "step_000014", "step_000021", "step_000028", "step_000030"]
    with pytest.raises(SpecError, match="steps, every or final"):
        tiny_denoiser(events=[{"kind": "checkpoint"}])


def test_diagnostics_cope_with_diverged_weights_damaged_records_and_several_arms(tmp_path):
    import json

    from trainlab.analysis.blobs import diagnose, results_json
    from trainlab.cli import main

    study = blob_study(tmp_path, arms=[{"name": "a", "optimizer": "adam", "lr": 0.02},
                                       {"name": "b", "optimizer": "sgd", "lr": 0.1}])
    trial = study / "trials" / "trial_0000"
    assert json.loads((trial / "results-a.json").read_text())["arm"] == "a"
    assert json.loads((trial / "results-b.json").read_text())["training_history"][-1]["epoch"] == 3
    state = torch.load(trial / "checkpoints" / "step_000030" / "b.pt", weights_only=True)
    state["model"]["fc1.weight"][0, :] = float("nan")  # as a diverged arm saves it
    torch.save(state, trial / "checkpoints" / "step_000030" / "b.pt")
    with open(trial / "metrics.jsonl", "a") as fh:  # records no writer makes: they must not break the report
        fh.write('{"kind": ["x"], "arm": "a", "step": 30}\n{"kind": "probe", "probe": "blobs", "arm": "a", '
                 '"step": 31, "correlation": "n/a"}\n{"kind": "eval", "arm": "a", "step": "late"}\n')
    frame, _ = diagnose(trial / "checkpoints" / "step_000030" / "b.pt")
    assert frame["clusters"].isna().all() and (frame["non_finite"] > 0).all()
    assert main(["report", str(study)]) == 0
    assert "## Blob diagnostics" in (study / "report.md").read_text()
    history = results_json(trial, "a")["training_history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]  # the stray records are not epochs
    (trial / "summary.json").write_text("{")  # torn: the epoch length is unknown, so no epoch is guessed
    history = results_json(trial, "a")["training_history"]
    assert all(h["epoch"] is None for h in history) and [h["step"] for h in history][:4] == [0, 10, 20, 30]


def test_hdbscan_counts_one_blob_as_one_cluster_and_nothing_in_too_few_points():
    rng = np.random.default_rng(1)
    options = {**BLOB_OPTIONS, "method": "hdbscan", "min_cluster_size": 25, "gmm": False}
    one = blob_metrics(rng.standard_normal((2000, 2)), options, seed=0)
    assert one["clusters"] == 1 and one["silhouette"] is None and one["eps"] is None
    centres = np.array([[0.0, 0.0], [1.4, 0.08], [-1.4, -0.08]])
    x = np.concatenate([c + s * rng.standard_normal((n, 2)) for c, n, s in
                        zip(centres, (4800, 60, 60), (0.08, 0.05, 0.05))])
    three = blob_metrics(x * np.array([1.0, 0.05]), options, seed=0)  # very different densities and scales
    assert three["clusters"] == 3 and sorted(three["cluster_sizes"])[:2] == [60, 60]
    assert blob_metrics(x[:20], options, seed=0)["clusters"] == 0
