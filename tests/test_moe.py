import pytest
import torch

from conftest import needs_shakespeare, small_spec
from trainlab.engine import MemorySink, Trial
from trainlab.models import MoEConfig, MoELM
from trainlab.models.moe import rotary
from trainlab.spec import load_spec
from trainlab import registries


def test_moe_presets_and_tied_embeddings():
    task = registries().tasks.get("moe-lm").target
    tiny, big = task.Options(), task.Options(preset="moe-384")
    assert (tiny.n_embd, tiny.experts, tiny.top_k) == (64, 4, 2)
    assert (big.n_embd, big.n_layer, big.n_head, big.ff, big.experts, big.top_k) == (384, 6, 8, 1536, 8, 2)
    model = MoELM(MoEConfig(vocab_size=50, n_embd=32, n_head=4, ff=64))
    assert not any(name.startswith("head") for name, _ in model.named_parameters())  # the output reuses embed
    with pytest.raises(ValueError, match="top_k cannot exceed experts"):
        task.Options(preset="custom", n_embd=32, n_layer=1, n_head=2, ff=8, experts=2, top_k=3)


def test_routing_is_top_k_and_the_balance_loss_is_one_when_uniform():
    torch.manual_seed(0)
    cfg = MoEConfig(vocab_size=20, n_embd=16, n_head=2, ff=8, experts=4, top_k=2, n_layer=1)
    model = MoELM(cfg)
    moe = model.blocks[0].moe
    with torch.no_grad():
        moe.router.weight.zero_()  # equal probabilities: the loss of perfect balance is exactly 1
    model(torch.randint(0, 20, (3, 10)))
    assert moe.aux_loss.item() == pytest.approx(1.0)
    x = torch.randn(2, 5, 16)
    out = moe(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_rotary_keeps_norms_and_makes_attention_depend_on_relative_position():
    q = torch.randn(1, 1, 6, 8)
    rotated = rotary(q)
    assert torch.allclose(rotated.norm(dim=-1), q.norm(dim=-1), atol=1e-6)
    same = q[:, :, :1].expand(1, 1, 6, 8)
    r = rotary(same)
    scores = r @ r.transpose(-1, -2)
    assert torch.allclose(scores[0, 0, 0, 1], scores[0, 0, 3, 4], atol=1e-5)  # depends only on the offset


@needs_shakespeare
def test_moe_task_trains_and_samples():
    spec = load_spec({"task": {"name": "moe-lm", "n_chars": 20000, "dropout": 0.0},
                      "arms": [{"optimizer": "muon", "lr": 0.02}], "plan": {"steps": 8, "batch_size": 8, "eval_every": 4}})
    summary = Trial(spec).run()
    arm = summary["arms"]["muon"]
    assert arm["final_test_loss"] < 5.6 and isinstance(arm["sample"], str) and len(arm["sample"]) > 10


@pytest.mark.parametrize("task", [{"name": "mnist-mlp", "source": "offline", "n_train": 512, "n_test": 64},
                                  pytest.param({"name": "moe-lm", "n_chars": 20000, "dropout": 0.0, "aux_loss_weight": 0.0},
                                               marks=needs_shakespeare)])
def test_gradient_accumulation_gives_the_whole_batch_gradient(task):
    def losses(k):
        spec = load_spec(small_spec(task=task, arms=[{"optimizer": "adam", "lr": 0.003}], plan__steps=6,
                                    plan__batch_size=16, plan__grad_accumulation=k))
        sink = MemorySink()
        Trial(spec, sink=sink).run()
        return [r["loss"] for r in sink.records if r["kind"] in ("train", "eval")]

    whole, split = losses(1), losses(4)
    assert whole == pytest.approx(split, rel=1e-9, abs=1e-12)
