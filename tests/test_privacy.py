"""DP-SGD engines: every mode's per-sample norms and clipped gradient equal explicit
per-sample gradients, on every supported layer type, with clipping that binds."""

import os

import pytest
import torch
from torch import nn

from trainlab.errors import UserError
from trainlab.models.moe import RMSNorm as TrainlabRMSNorm
from trainlab.privacy import MODES, DPEngine, per_sample_loss

from conftest import needs_shakespeare

DP_MODES = [m for m in MODES if m != "no_dp"]


class Pooled(nn.Module):
    """body -> mean over every non-batch, non-feature position -> a linear head (10 classes)."""

    def __init__(self, body: nn.Module, features: int, channels_first: bool = False):
        super().__init__()
        self.body, self.channels_first = body, channels_first
        self.head = nn.Linear(features, 10)

    def forward(self, x):
        h = self.body(x)
        if self.channels_first:
            h = h.movedim(1, -1)
        return self.head(h.reshape(h.shape[0], -1, h.shape[-1]).mean(1))


class PositionModel(nn.Module):
    """Token plus position embeddings, the position ids expanded (a non-contiguous index tensor)."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(12, 6, padding_idx=0)
        self.pos = nn.Embedding(7, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 12, bias=False)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1]).expand(idx.shape[0], -1)
        return self.head(self.norm(self.tok(idx) + self.pos(pos)))


def cases():
    torch.manual_seed(0)  # the models' initial weights
    g = torch.Generator().manual_seed(0)
    x2 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x3 = torch.randn(6, 4, 5, generator=g, dtype=torch.float64)
    x4 = torch.randn(6, 3, 4, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    tokens = torch.randint(0, 12, (6, 7), generator=g)
    tokens[:, -2:] = 0  # padding
    return {
        "linear-2d": (Pooled(nn.Linear(5, 8), 8), x2, y),
        "linear-3d": (Pooled(nn.Linear(5, 8), 8), x3, y),
        "linear-4d": (Pooled(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8)), 8), x4, y),
        "layernorm": (Pooled(nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8)), 8), x3, y),
        "rmsnorm": (Pooled(nn.Sequential(nn.Linear(5, 8), nn.RMSNorm(8), TrainlabRMSNorm(8)), 8), x3, y),
        "conv1d": (Pooled(nn.Conv1d(4, 8, 3, padding=1, stride=2), 8, channels_first=True), x3.transpose(1, 2)
                   .contiguous().transpose(1, 2).reshape(6, 4, 5), y),
        "conv2d": (Pooled(nn.Conv2d(3, 8, (2, 3), padding=1, dilation=(1, 2)), 8, channels_first=True), x4, y),
        "embedding": (PositionModel(), tokens, torch.where(tokens > 0, (tokens + 1) % 12, -100)),
    }


def explicit(model, x, y):
    """Per-sample gradients the slow way: one backward per sample."""
    grads = []
    for i in range(len(x)):
        model.zero_grad()
        per_sample_loss(model(x[i:i + 1]), y[i:i + 1]).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    return grads


@pytest.mark.parametrize("case", list(cases()))
@pytest.mark.parametrize("mode", DP_MODES)
def test_each_engine_matches_explicit_per_sample_gradients(case, mode):
    torch.manual_seed(1)
    model, x, y = cases()[case]
    model.double()
    grads = explicit(model, x, y)
    norms = torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in sample.values())) for sample in grads])
    C = float(norms.median())  # binding: about half the samples are clipped
    factors = (C / (norms + 1e-6)).clamp(max=1)
    assert (factors < 1).sum() >= 2
    expected = {n: sum(c * sample[n] for c, sample in zip(factors, grads)) / len(x) for n in grads[0]}
    result = DPEngine(model, mode, max_grad_norm=C, tile=3).backward(x, y)
    torch.testing.assert_close(result.norms, norms, rtol=1e-10, atol=1e-12)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12, msg=f"{case}/{mode}: {name}")


def test_per_layer_clipping_and_noise_agree_across_modes():
    model, x, y = cases()["embedding"]
    model.double()
    results = {}
    for mode in DP_MODES:
        for p in model.parameters():
            p.grad = None
        DPEngine(model, mode, max_grad_norm=0.05, noise_multiplier=0.7, clipping="per_layer", seed=5).backward(x, y)
        results[mode] = [p.grad.clone() for p in model.parameters()]
    for mode in DP_MODES[1:]:
        for a, b in zip(results["per_sample"], results[mode]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    plain = DPEngine(model, "no_dp").backward(x, y)
    assert plain.norms is None


def test_bf16_compute_keeps_norms_in_float32():
    model, x, y = cases()["linear-3d"]
    model.to(torch.bfloat16)
    result = DPEngine(model, "bk", max_grad_norm=0.1).backward(x.to(torch.bfloat16), y)
    assert result.norms.dtype == torch.float32
    assert all(p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all() for p in model.parameters())


def test_unsupported_and_tied_modules_are_named():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.scale

    with pytest.raises(UserError, match=r"module 'odd' \(Odd\) has parameters but no per-sample rule"):
        DPEngine(nn.ModuleDict({"odd": Odd()}), "ghost")
    tied = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    tied[1].weight = tied[0].weight
    with pytest.raises(UserError, match="parameter '0.weight' is shared by modules '0' and '1'"):
        DPEngine(tied, "bk")
    with pytest.raises(UserError, match="unknown DP mode 'opacus'"):
        DPEngine(tied, "opacus")
    DPEngine(tied, "per_sample")  # the reference handles any module


def _ddp_rank(rank: int, world: int, folder: str, mode: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        model, x, y = cases()["embedding"]
        model.double()
        share = slice(rank * len(x) // world, (rank + 1) * len(x) // world)  # each rank its own samples
        DPEngine(model, mode, max_grad_norm=0.05, noise_multiplier=0.5, seed=11, distributed=True).backward(
            x[share], y[share])
        torch.save({n: p.grad for n, p in model.named_parameters()}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["bk", "ghost"])
def test_two_process_data_parallel_gives_the_single_process_update(tmp_path, mode):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_rank, args=(2, str(tmp_path), mode), nprocs=2, join=True)
    model, x, y = cases()["embedding"]
    model.double()
    DPEngine(model, mode, max_grad_norm=0.05, noise_multiplier=0.5, seed=11).backward(x, y)
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-12, msg=f"rank {rank}: {name}")


FSDP_MODES = ["no_dp", "bk", "ghost", "flash", "fused"]


def _fsdp_rank(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        out = {}
        for mode in FSDP_MODES:
            model, x, y = cases()["embedding"]
            model.double()
            for layer in (model.tok, model.pos, model.norm, model.head):
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            share = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
            engine = DPEngine(model, mode, max_grad_norm=0.05, noise_multiplier=0.5, seed=11, expected_batch_size=6)
            assert engine.distributed  # turned on by the sharded parameters
            engine.backward(x[share], y[share])
            engine.backward(x[:0], y[:0])  # an empty (Poisson) batch: noise alone, also sharded
            for name, p in model.named_parameters():
                assert tuple(p.grad.to_local().shape) == tuple(p.to_local().shape)  # each rank keeps its shard
                out[f"{mode}/{name}"] = p.grad.full_tensor()
        torch.save(out, f"{folder}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # as the suite's ranks do: a thread torn down at interpreter exit can abort a finished rank


def test_fsdp2_sharded_model_gets_the_single_process_update(tmp_path):
    """Two CPU processes (gloo), the model sharded with fully_shard: every mode's update, gathered
    from the shards, equals one process's on all the samples."""
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    for mode in FSDP_MODES:
        model, x, y = cases()["embedding"]
        model.double()
        engine = DPEngine(model, mode, max_grad_norm=0.05, noise_multiplier=0.5, seed=11, expected_batch_size=6)
        engine.backward(x, y)
        engine.backward(x[:0], y[:0])
        for rank in range(2):
            grads = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
            for name, p in model.named_parameters():
                torch.testing.assert_close(grads[f"{mode}/{name}"], p.grad, rtol=1e-10, atol=1e-12,
                                           msg=f"{mode}, rank {rank}: {name}")


def test_an_empty_batch_needs_an_expected_batch_size():
    model, x, y = cases()["linear-2d"]
    with pytest.raises(UserError, match="empty batch: give expected_batch_size"):
        DPEngine(model, "bk", noise_multiplier=1.0).backward(x[:0], y[:0])
    DPEngine(model, "bk", noise_multiplier=1.0, expected_batch_size=4).backward(x[:0], y[:0])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_per_sample_mode_refuses_a_sharded_model(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        model = nn.Linear(3, 2)
        fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
        with pytest.raises(UserError, match="per_sample cannot run on an FSDP-sharded model"):
            DPEngine(model, "per_sample")
    finally:
        dist.destroy_process_group()


def test_epsilon_is_the_accountant_librarys_own_answer():
    pytest.importorskip("opacus")
    from opacus.accountants import PRVAccountant, RDPAccountant

    from trainlab.privacy.accounting import Accountant, epsilon, noise_for

    sigma, q, steps, delta = 1.1, 256 / 60_000, 60 * (60_000 // 256), 1e-5  # MNIST, 60 epochs (Abadi et al.)
    for kind, library in (("rdp", RDPAccountant), ("prv", PRVAccountant)):
        reference = library()
        for _ in range(steps):
            reference.step(noise_multiplier=sigma, sample_rate=q)
        assert epsilon(sigma, q, steps, delta, kind) == pytest.approx(reference.get_epsilon(delta), rel=1e-6)
    assert 2.0 < epsilon(sigma, q, steps, delta) < 3.5
    running = Accountant(sigma, q, delta)
    assert running.epsilon == 0.0
    running.step()
    assert 0 < running.epsilon < epsilon(sigma, q, steps, delta)
    noise = noise_for(3.0, 0.01, 1000, 1e-5)
    assert epsilon(noise, 0.01, 1000, 1e-5) <= 3.0 < epsilon(noise * 0.97, 0.01, 1000, 1e-5)


def test_the_consistency_suite_passes_both_regimes_for_every_mode(tmp_path):
    import json

    from trainlab.recipes.dp_consistency import run_suite

    root = run_suite(["gpt-tiny", "llama-tiny"], list(MODES), steps=3, batch=4, seq=16, output_root=str(tmp_path),
                     quiet=True)
    summary = json.loads((root / "summary.json").read_text())
    assert summary["passed"]
    covered = {(r["model"], r["regime"], r["mode"]) for r in summary["rows"]}
    for model in ("gpt-tiny", "llama-tiny"):
        for mode in ("ghost", "bk", "flash", "fused"):
            assert {(model, "A", mode), (model, "B", mode)} <= covered
        assert (model, "B", "no_dp+noise") in covered
        assert (root / "figures" / f"{model}.png").exists()
        runs = [json.loads(path.read_text()) for path in root.glob("trials/*/run.json")]
        log = next(r for r in runs if r["model"] == model and r["regime"] == "A" and r["mode"] == "bk")
        assert len(log["loss"]) == 3 and "blocks.0.mlp.fc" in log["first_step_linear"] if model == "gpt-tiny" else True
    text = (root / "summary.md").read_text()
    assert "| gpt-tiny | A | fused | per_sample | clipped_gradient |" in text
    assert "| gpt-tiny | B | fused |" in text and "mean gradient norm" in text  # the per-mode table


def test_the_suite_shards_every_mode_over_processes_from_the_command(tmp_path, capsys, monkeypatch):
    """`--fsdp 2`: each DP mode runs as two gloo processes with FSDP2, gathered and compared with
    the one-process per_sample reference; from a relative output root, as users type it."""
    import json

    from trainlab.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["dp-consistency", "--fsdp", "2", "--model", "gpt-tiny", "--modes", "bk", "fused", "no_dp",
                 "--steps", "2", "--batch-size", "6", "--seq-len", "16", "--output-root", "runs", "--quiet"]) == 0
    (root,) = [p for p in (tmp_path / "runs").iterdir() if (p / "study.json").exists()]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["passed"] and summary["fsdp"] == 2
    sharded = [r for r in summary["per_mode"] if r["mode"] != "per_sample"]
    assert {(r["regime"], r["mode"]) for r in sharded} == {("A", "bk"), ("A", "fused"), ("B", "bk"), ("B", "fused"),
                                                            ("B", "no_dp")}
    assert all(r["processes"] == 2 and r["backend"] == "gloo" for r in sharded)
    reference = {r["regime"]: r for r in summary["per_mode"] if r["mode"] == "per_sample"}
    assert all(r["processes"] == 1 for r in reference.values())
    for r in sharded:
        assert r["final_loss"] == pytest.approx(reference[r["regime"]]["final_loss"], rel=1e-12)
    runs = [json.loads(path.read_text()) for path in root.glob("trials/*/run.json")]
    bk = next(r for r in runs if r["regime"] == "A" and r["mode"] == "bk")
    assert len(bk["per_sample_norms"][0]) == 6 and "blocks.0.mlp.fc" in bk["last_step_linear"]  # gathered, whole
    assert "sharded with FSDP2 over 2 processes" in (root / "summary.md").read_text()
    assert not list(root.glob("trials/*/rendezvous")) and not list(root.glob("trials/*/sharded.pt"))
    capsys.readouterr()
    assert main(["dp-consistency", "--fsdp", "3", "--batch-size", "2"]) == 2
    assert "--fsdp: 3 processes need a batch of at least 3" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing written beside the study
    from trainlab.errors import SpecError
    from trainlab.recipes.dp_consistency import suite_spec
    from trainlab.spec import load_spec

    spec = suite_spec(["gpt-tiny"], ["bk"], batch=6, fsdp=2)
    spec["job"]["batch"] = 1  # written by hand: the options themselves refuse it
    with pytest.raises(SpecError, match="fsdp: 2 processes need a batch of at least 2"):
        load_spec(spec)


def test_a_study_arm_trains_with_dp_sgd_and_reports_epsilon(tmp_path):
    pytest.importorskip("opacus")  # the accountant
    import json

    from conftest import small_spec
    from trainlab.study import read_jsonl, run_study

    private = {"mode": "bk", "max_grad_norm": 1e6, "noise_multiplier": 0.0}
    spec = small_spec(arms=[{"name": "plain", "optimizer": "sgd", "lr": 0.1},
                            {"name": "unclipped", "optimizer": "sgd", "lr": 0.1, "privacy": private},
                            {"name": "dp", "optimizer": "sgd", "lr": 0.1,
                             "privacy": {"mode": "ghost", "max_grad_norm": 0.5, "target_epsilon": 4.0}}],
                      plan__sampler="poisson", plan__steps=30)
    spec["output"] = {"root": str(tmp_path)}
    study = run_study(spec, quiet=True)
    summary = json.loads((study / "trials" / "trial_0000" / "summary.json").read_text())["arms"]
    # no clipping and no noise: DP-SGD is plain SGD (Poisson batches normalised by their expected size)
    records = read_jsonl(study / "trials" / "trial_0000" / "metrics.jsonl")
    plain = [r["loss"] for r in records if r["kind"] == "train" and r["arm"] == "plain"]
    assert plain and all(r["kind"] != "eval" or "epsilon" not in r for r in records if r["arm"] == "plain")
    dp = summary["dp"]["privacy"]
    assert dp["epsilon"] == pytest.approx(4.0, rel=0.02) and dp["noise_multiplier"] > 0.3
    epsilons = [r["epsilon"] for r in records if r["kind"] == "eval" and r["arm"] == "dp"]
    assert epsilons[0] == 0.0 and epsilons == sorted(epsilons) and epsilons[-1] == dp["epsilon"]
    assert summary["unclipped"]["privacy"]["clipped_fraction_last_step"] == 0.0
    report = (study / "report.md").read_text()
    assert "## Privacy" in report and "| dp | ghost | 0.5 |" in report


def test_no_clip_no_noise_dp_equals_plain_sgd_on_fixed_batches(tmp_path):
    import json

    from conftest import small_spec
    from trainlab.study import run_study

    private = {"mode": "bk", "max_grad_norm": 1e6, "noise_multiplier": 0.0}
    spec = small_spec(arms=[{"name": "plain", "optimizer": "sgd", "lr": 0.1},
                            {"name": "unclipped", "optimizer": "sgd", "lr": 0.1, "privacy": private}], plan__steps=30)
    spec["output"] = {"root": str(tmp_path)}
    arms = json.loads((run_study(spec, quiet=True) / "trials/trial_0000/summary.json").read_text())["arms"]
    assert arms["unclipped"]["final_test_loss"] == pytest.approx(arms["plain"]["final_test_loss"], rel=1e-10)


@needs_shakespeare
def test_dp_arms_refuse_what_they_cannot_do(tmp_path):
    from conftest import small_spec
    from trainlab.errors import SpecError
    from trainlab.spec import load_spec
    from trainlab.study import run_study

    with pytest.raises(SpecError, match="give either noise_multiplier or target_epsilon"):
        load_spec(small_spec(arms=[{"optimizer": "sgd", "lr": 0.1, "privacy": {"mode": "bk"}}]))
    tied = {"name": "t", "task": {"name": "moe-lm", "n_chars": 20000}, "plan": {"steps": 2, "batch_size": 4},
            "arms": [{"optimizer": "sgd", "lr": 0.1, "privacy": {"mode": "bk", "noise_multiplier": 1.0}}],
            "output": {"root": str(tmp_path)}}
    with pytest.raises(UserError, match=r"module 'blocks.0.moe' \(Experts\) has parameters but no per-sample rule"):
        run_study(tied, quiet=True)

    class TiedLM(nn.Module):  # the head multiplies by the embedding matrix: a second use of one weight
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)

        def forward(self, idx):
            return self.embed(idx) @ self.embed.weight.T

    idx = torch.randint(0, 10, (3, 5))
    with pytest.raises(UserError, match="'embed.weight' is used 2 times in the forward pass"):
        DPEngine(TiedLM(), "bk").backward(idx, idx)
    DPEngine(TiedLM(), "per_sample").backward(idx, idx)


def test_hugging_face_models_from_a_config_pass_the_consistency_suite(tmp_path):
    pytest.importorskip("transformers")
    import json

    from trainlab.recipes.dp_consistency import run_suite

    # float32: Hugging Face's LlamaRMSNorm normalises in float32 even inside a float64 model
    root = run_suite(["hf-gpt2", "hf-llama"], ["no_dp", "per_sample", "ghost", "bk", "fused"], steps=2, batch=4,
                     seq=12, dtype="float32", output_root=str(tmp_path), quiet=True)
    summary = json.loads((root / "summary.json").read_text())
    assert summary["passed"] and {r["model"] for r in summary["rows"]} == {"hf-gpt2", "hf-llama"}


def test_a_layer_input_shared_across_samples_is_refused():
    class SharedPositions(nn.Module):  # position ids without a batch dimension: one output row for all samples
        def __init__(self):
            super().__init__()
            self.tok, self.pos, self.head = nn.Embedding(10, 4), nn.Embedding(8, 4), nn.Linear(4, 10)

        def forward(self, idx):
            return self.head(self.tok(idx) + self.pos(torch.arange(idx.shape[1])))

    idx = torch.randint(0, 10, (3, 5))
    with pytest.raises(UserError, match="module 'pos' produced an output for 5 sample"):
        DPEngine(SharedPositions(), "bk").backward(idx, idx)


TRITON_CHECK = r"""
import os
os.environ["TRITON_INTERPRET"] = "1"  # the kernel on CPU tensors, through Triton's interpreter
import torch
from trainlab.privacy import DPEngine, kernels
from trainlab.recipes.dp_consistency import build_problem

torch.manual_seed(0)
explicit = lambda a, g: torch.bmm(g.double().transpose(1, 2), a.double()).pow(2).sum((1, 2))
for B, T, n_in, n_out in [(3, 5, 7, 9), (2, 40, 70, 130), (4, 33, 64, 16)]:
    a, g = torch.randn(B, T, n_in), torch.randn(B, T, n_out)
    torch.testing.assert_close(kernels.weight_norm_sq(a, g).double(), explicit(a, g), rtol=1e-5, atol=0)
a = torch.randn(3, 33, 20).transpose(1, 2)  # a strided view
g = torch.randn(3, 20, 17)
torch.testing.assert_close(kernels.weight_norm_sq(a, g).double(), explicit(a, g), rtol=1e-5, atol=0)
a, g = torch.randn(2, 24, 48).bfloat16(), torch.randn(2, 24, 40).bfloat16()  # bf16 in, float32 sums
torch.testing.assert_close(kernels.weight_norm_sq(a, g).double(), explicit(a, g), rtol=1e-5, atol=0)

calls = []
original = kernels.weight_norm_sq
kernels.weight_norm_sq = lambda a, g, **kw: calls.append(1) or original(a, g, **kw)
problem = build_problem("gpt-tiny", 1, 4, 16, seed=0)
x, y = problem.batches[0]
results = {}
for mode in ("per_sample", "fused"):
    torch.manual_seed(0)
    model = problem.make()
    result = DPEngine(model, mode, max_grad_norm=0.5, seed=5).backward(x, y)
    results[mode] = result.norms, {n: p.grad for n, p in model.named_parameters()}
assert calls, "the fused mode did not use the kernel"
assert float(results["per_sample"][0].median()) > 0.5  # the clip binds
torch.testing.assert_close(results["fused"][0], results["per_sample"][0], rtol=1e-5, atol=0)
for name, grad in results["per_sample"][1].items():
    torch.testing.assert_close(results["fused"][1][name], grad, rtol=1e-5, atol=1e-7)
print("ok", len(calls))
"""


def test_triton_norm_kernel_matches_explicit_norms_and_the_reference_mode():
    """The fused mode's Triton kernel, run by Triton's interpreter on CPU (no GPU needed):
    per-sample norms equal explicit per-sample gradients', and fused with the kernel equals
    per_sample with a binding clip."""
    pytest.importorskip("triton")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")


def test_frozen_weights_take_no_part_in_norms_or_updates():
    """BitFit: frozen weights, trainable biases. Norms and sums cover the biases alone."""
    model, x, y = cases()["layernorm"]
    model.double()
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    grads = explicit(model, x, y)
    norms = torch.stack([torch.sqrt(sum(v.pow(2).sum() for v in g.values())) for g in grads])
    for mode in DP_MODES:
        for p in model.parameters():
            p.grad = None
        result = DPEngine(model, mode, max_grad_norm=float(norms.median())).backward(x, y)
        torch.testing.assert_close(result.norms, norms, rtol=1e-10, atol=1e-12, msg=mode)
        assert all((p.grad is None) != p.requires_grad for p in model.parameters()), mode


def test_batch_statistics_and_own_forwards_are_refused():
    bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Flatten(), nn.LazyLinear(10))
    x = torch.randn(4, 3, 5, 5)
    bn(x)  # materialise the lazy layer
    for mode in MODES[1:]:
        with pytest.raises(UserError, match=r"module '1' \(BatchNorm2d\) normalises with batch statistics"):
            DPEngine(bn, mode).backward(x, torch.arange(4))
    bn.eval()
    DPEngine(bn, "bk", max_grad_norm=0.1).backward(x, torch.arange(4))  # running statistics: per sample

    class Scaled(nn.Linear):  # a Linear with a forward of its own: the Linear rule does not describe it
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(UserError, match=r"module '0' \(Scaled\) has parameters but no per-sample rule"):
        DPEngine(nn.Sequential(Scaled(3, 2)), "bk")


def test_a_lookalike_layer_that_computes_something_else_is_refused():
    """Layers matched by structure (Hugging Face's) are checked against autograd on first use."""

    class OffsetRMSNorm(nn.Module):  # named and shaped like Hugging Face's, but y = x/rms(x) * w + 1
        def __init__(self, d):
            super().__init__()
            self.weight, self.variance_epsilon = nn.Parameter(torch.randn(d)), 1e-6

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) * self.weight ** 2

    OffsetRMSNorm.__module__ = "transformers.models.fake.modeling_fake"
    model = nn.Sequential(nn.Linear(5, 6), OffsetRMSNorm(6), nn.Linear(6, 10)).double()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.arange(4)
    with pytest.raises(UserError, match=r"rule for module '1' \(OffsetRMSNorm\) does not reproduce its gradient"):
        DPEngine(model, "bk").backward(x, y)
