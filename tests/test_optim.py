import math

import pytest
import torch

from torch import nn

from trainlab.errors import SpecError
from trainlab.models import GPT, GPTConfig, MoEConfig, MoELM, PooledMLP, SmallCNN
from trainlab import registries
from trainlab.optim import Muon, build_optimizer, lr_factor, parameter_roles, split_for_muon
from trainlab.spec import load_spec

from conftest import small_spec


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
@pytest.mark.parametrize("nesterov, rule", [(True, "original"), (False, "match_rms_adamw")])
def test_trainlab_muon_matches_torch_muon_exactly_on_matrices(nesterov, rule):
    torch.manual_seed(0)
    weights = [torch.randn(12, 7), torch.randn(5, 9)]
    a = [w.clone().requires_grad_() for w in weights]
    b = [w.clone().requires_grad_() for w in weights]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=rule)
    opt_a, opt_b = torch.optim.Muon(a, **kw), Muon(b, **kw)
    for step in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for params, opt in ((a, opt_a), (b, opt_b)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def split(model, example):
    layouts, adamw = split_for_muon(parameter_roles(model, example))
    return layouts, set(adamw)


def test_muon_split_by_role_on_an_mlp_a_gpt_and_a_cnn():
    layouts, adamw = split(PooledMLP(6, (8, 8)), torch.randn(2, 1, 28, 28))
    assert layouts == {"net.0.weight": "matrix", "net.2.weight": "matrix"}  # the head net.4 is not hidden
    assert adamw == {"net.0.bias", "net.2.bias", "net.4.weight", "net.4.bias"}
    gpt = GPT(GPTConfig())
    layouts, adamw = split(gpt, torch.randint(0, 26, (2, 16)))
    assert {"head.weight", "tok_emb.weight", "pos_emb.weight"} <= adamw
    assert "blocks.0.attn.qkv.weight" in layouts and all(len(dict(gpt.named_parameters())[n].shape) == 2 for n in layouts)
    layouts, adamw = split(SmallCNN(12, 11), torch.randn(2, 1, 28, 28))
    assert layouts["conv.weight"] == "conv" and "fc2.weight" in adamw and "fc1.weight" in layouts


def test_muon_gets_the_experts_and_not_the_tied_head_of_the_moe():
    model = MoELM(MoEConfig())
    roles = parameter_roles(model, torch.randint(0, 256, (2, 64)))
    layouts, adamw = split_for_muon(roles)
    hidden = sum(r.numel for r in roles.values() if r.role not in ("embedding", "head", "vector"))
    assert sum(roles[n].numel for n in layouts) >= 0.9 * hidden
    assert layouts["blocks.0.moe.w_in"] == "stacked" and layouts["blocks.1.moe.router.weight"] == "matrix"
    assert roles["embed.weight"].role == "embedding" and "embed.weight" in adamw  # tied: lookup and head


def test_stacked_and_conv_updates_orthogonalise_each_matrix():
    """A stacked [E, m, n] parameter is updated as E separate Muon matrices; a conv filter as [out, in*k*k]."""
    torch.manual_seed(0)
    grads = torch.randn(3, 4, 6)
    stacked = torch.zeros(3, 4, 6, requires_grad=True)
    singles = [torch.zeros(4, 6, requires_grad=True) for _ in range(3)]
    opt_s = Muon([{"params": [stacked], "layout": "stacked"}], lr=0.1, weight_decay=0.0, nesterov=False)
    opt_m = Muon(singles, lr=0.1, weight_decay=0.0, nesterov=False)
    stacked.grad = grads.clone()
    for p, g in zip(singles, grads):
        p.grad = g.clone()
    opt_s.step()
    opt_m.step()
    torch.testing.assert_close(stacked.detach(), torch.stack([p.detach() for p in singles]), rtol=0.02, atol=1e-3)
    conv = torch.zeros(5, 2, 3, 3, requires_grad=True)
    conv.grad = torch.randn(5, 2, 3, 3)
    Muon([{"params": [conv], "layout": "conv"}], lr=1.0, weight_decay=0.0, nesterov=False, adjust_lr_fn="none").step()
    singular = torch.linalg.svdvals(conv.detach().reshape(5, 18).double())
    assert singular.min() > 0.5 and singular.max() < 1.5  # close to orthogonal rows


def test_muon_split_overrides_and_empty_groups():
    mlp = PooledMLP(6, (8, 8))
    roles = parameter_roles(mlp, torch.randn(2, 1, 28, 28))
    layouts, _ = split_for_muon(roles, muon_params=["net.4.weight"], adamw_params=["net.0.*"])
    assert set(layouts) == {"net.2.weight", "net.4.weight"}
    with pytest.raises(SpecError, match="adamw_params: pattern 'blocks.*' matches no trainable parameter"):
        split_for_muon(roles, adamw_params=["blocks.*"])
    with pytest.raises(SpecError, match="muon_params: pattern 'net.0.bias' matches 'net.0.bias' of shape"):
        split_for_muon(roles, muon_params=["net.0.bias"])
    spec = load_spec(small_spec(arms=[{"optimizer": "muon", "lr": 0.02, "adamw_params": ["*"]}]))
    with pytest.raises(SpecError, match="Muon found no hidden weight matrix"):
        build_optimizer(spec["arms"][0], mlp, torch.randn(2, 1, 28, 28))
    spec["arms"][0]["allow_empty_muon"] = True
    assert build_optimizer(spec["arms"][0], mlp, torch.randn(2, 1, 28, 28)).split["muon"]["parameters"] == 0


def test_muon_arm_uses_lr_ratio_for_adamw_part_and_round_trips_state():
    spec = load_spec(small_spec(arms=[{"optimizer": "muon", "lr": 0.02, "adamw_lr_ratio": 0.25}]))
    model = PooledMLP()
    example = torch.randn(2, 1, 28, 28)
    opt = build_optimizer(spec["arms"][0], model, example)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.005]
    assert opt.split["muon"]["names"] == ["net.0.weight"] and opt.split["muon"]["parameters"] == 8 * 36
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    opt.step()
    state = opt.state_dict()
    clone = build_optimizer(spec["arms"][0], model, example)
    clone.load_state_dict(state)
    assert len(clone.state) == len(opt.state) == 4


@pytest.mark.parametrize("name", registries().optimizers.names())
def test_every_optimizer_builds_and_steps(name):
    spec = load_spec(small_spec(arms=[{"optimizer": name, "lr": 0.01}]))
    model = PooledMLP()
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(spec["arms"][0], model, torch.randn(2, 1, 28, 28))
    model(torch.randn(4, 1, 28, 28)).logsumexp(-1).sum().backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all("base_lr" in g for g in opt.param_groups)


def test_schedules():
    constant = {"kind": "constant", "warmup_steps": 0}
    assert lr_factor(constant, 50, 100) == 1.0
    warm = {"kind": "constant", "warmup_steps": 4}
    assert [lr_factor(warm, s, 100) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    step = {"kind": "step", "warmup_steps": 0, "step_size": 10, "gamma": 0.5}
    assert [lr_factor(step, s, 100) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    cosine = {"kind": "cosine", "warmup_steps": 10, "min_factor": 0.1}
    assert lr_factor(cosine, 10, 110) == 1.0
    assert math.isclose(lr_factor(cosine, 60, 110), 0.55)
    assert math.isclose(lr_factor(cosine, 110, 110), 0.1)


class TinyResNet(nn.Module):
    """Convolutions with BatchNorm and a residual connection, pooled, a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = h + torch.relu(self.conv(h))
        return self.fc(h.mean((2, 3)))


def test_muon_takes_the_filters_of_a_conv_net_and_the_matrices_of_hf_gpt2():
    layouts, adamw = split(TinyResNet(), torch.randn(2, 3, 8, 8))
    assert layouts == {"stem.weight": "conv", "conv.weight": "conv"}
    assert adamw == {"bn.weight", "bn.bias", "fc.weight", "fc.bias"}
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    gpt2 = transformers.GPT2LMHeadModel(config)
    roles = parameter_roles(gpt2, torch.randint(0, 50, (2, 8)))
    layouts, adamw = split_for_muon(roles)
    for block in range(2):  # Conv1D layers: attention and MLP matrices
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            assert layouts[f"transformer.h.{block}.{layer}.weight"] == "matrix"
    assert roles["transformer.wte.weight"].role == "embedding" and "transformer.wte.weight" in adamw  # tied head
    assert all(len(roles[n].shape) == 1 for n in adamw if n not in ("transformer.wte.weight", "transformer.wpe.weight"))


def test_a_muon_arm_reports_its_split_in_the_summary():
    from trainlab.engine import Trial

    spec = load_spec(small_spec(arms=[{"optimizer": "muon", "lr": 0.02}], **{"task.name": "mnist-cnn", "plan.steps": 2}))
    summary = Trial(spec).run()
    groups = summary["arms"]["muon"]["param_groups"]
    assert groups["muon"]["names"] == ["conv.weight", "fc1.weight"] and groups["muon"]["roles"] == {"conv": 108, "matrix": 132}
    assert "fc2.weight" in groups["adamw"]["names"] and groups["notes"] == []
    assert summary["notes"] == ["data: " + summary["data_source"] + ", not the full MNIST IDX files"]
