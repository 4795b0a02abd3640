import math

import pytest
import torch

from trainlab.models import GPT, GPTConfig, PooledMLP
from trainlab.optim import OPTIMIZERS, ReferenceMuon, build_optimizer, lr_factor, split_for_muon
from trainlab.spec import load_spec

from conftest import small_spec


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
@pytest.mark.parametrize("nesterov, rule", [(True, "original"), (False, "match_rms_adamw")])
def test_reference_muon_matches_torch_muon_exactly(nesterov, rule):
    torch.manual_seed(0)
    weights = [torch.randn(12, 7), torch.randn(5, 9)]
    a = [w.clone().requires_grad_() for w in weights]
    b = [w.clone().requires_grad_() for w in weights]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=rule)
    opt_a, opt_b = torch.optim.Muon(a, **kw), ReferenceMuon(b, **kw)
    for step in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for params, opt in ((a, opt_a), (b, opt_b)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_muon_split_hidden_matrices_vs_the_rest():
    mlp = PooledMLP(6, (8, 8))
    hidden, other = split_for_muon(mlp)
    assert [tuple(p.shape) for p in hidden] == [(8, 36), (8, 8)]
    assert {tuple(p.shape) for p in other} == {(8,), (10, 8), (10,)}
    gpt = GPT(GPTConfig())
    hidden, other = split_for_muon(gpt)
    ids = {id(p) for p in hidden}
    assert id(gpt.head.weight) not in ids and id(gpt.tok_emb.weight) not in ids
    assert id(gpt.blocks[0].attn.qkv.weight) in ids and all(p.ndim == 2 for p in hidden)
    assert len(hidden) + len(other) == len(list(gpt.parameters()))


def test_muon_arm_uses_lr_ratio_for_adamw_part_and_round_trips_state():
    spec = load_spec(small_spec(arms=[{"optimizer": "muon", "lr": 0.02, "adamw_lr_ratio": 0.25}]))
    model = PooledMLP()
    opt = build_optimizer(spec["arms"][0], model)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.005]
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    opt.step()
    state = opt.state_dict()
    clone = build_optimizer(spec["arms"][0], model)
    clone.load_state_dict(state)
    assert len(clone.state) == len(opt.state) == 4


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_builds_and_steps(name):
    spec = load_spec(small_spec(arms=[{"optimizer": name, "lr": 0.01}]))
    model = PooledMLP()
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(spec["arms"][0], model)
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
