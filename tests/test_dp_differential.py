"""A randomized differential test of DP-SGD: seeded random models composed from the supported
layers and from patterns the per-sample rules cannot see (frozen parts, tied weights,
functional uses of a module's weight, sequence-first inputs with T == B, a reuse or a
functional use that only appears from a later step). Every mode is compared with per-sample
gradients from torch.func (vmap of grad) in float64, with a clip that binds, over several
steps. Each case must end exact (1e-10) or refused with a one-line UserError; a silent
difference fails, and so does refusing a model that has none of the hostile patterns."""

import copy
import random

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from trainlab.errors import UserError
from trainlab.models.moe import RMSNorm as TrainlabRMSNorm
from trainlab.privacy import MODES, DPEngine, clip_factors, per_sample_loss

CASES = 64
STEPS = 3
CLEAN_OPS = ("linear", "layernorm", "rmsnorm", "trainlab_rmsnorm", "conv1d")
HOSTILE_OPS = ("seq_first", "functional", "matmul_weight", "reuse_late", "functional_late")


class RandomNet(nn.Module):
    """A stem (embedding, linear or convolution), a random body of blocks, a head. `step` is set
    by the test before each step: some hostile blocks change behaviour from step `late` on."""

    def __init__(self, seed: int):
        super().__init__()
        rng = random.Random(seed)
        hostile = rng.random() < 0.6
        ops = [rng.choice(CLEAN_OPS) for _ in range(rng.randint(1, 3))]
        if hostile:
            ops.insert(rng.randrange(len(ops) + 1), rng.choice(HOSTILE_OPS))
        self.kind = rng.choice(["tokens", "features"] if "seq_first" in ops else ["tokens", "features", "image"])
        self.batch = rng.choice([3, 4, 5])
        self.length = rng.choice([self.batch, self.batch, 2, self.batch + 1])  # T == B: sequence-first is ambiguous
        self.width, self.classes = rng.choice([4, 6]), 5
        self.step, self.late = 1, rng.choice([2, 3])
        if self.kind == "tokens":
            self.stem = nn.Embedding(self.classes, self.width, padding_idx=rng.choice([None, 0]))
        elif self.kind == "features":
            self.stem = nn.Linear(3, self.width)
        else:
            self.stem = nn.Conv2d(2, self.width, 2, padding=1)
        self.ops = ops
        self.body = nn.ModuleList(self.block(op) for op in ops)
        self.tied = hostile and self.kind == "tokens" and rng.random() < 0.5
        self.head = None if self.tied else nn.Linear(self.width, self.classes, bias=rng.random() < 0.5)
        self.pool = rng.random() < 0.4  # one label per sample instead of one per position
        for name, p in self.named_parameters():  # BitFit-style: freeze some weights, keep their biases
            if name.endswith("weight") and rng.random() < 0.25:
                p.requires_grad_(False)
        self.hostile = hostile

    def block(self, op: str) -> nn.Module:
        d = self.width
        if op == "layernorm":
            return nn.LayerNorm(d)
        if op == "rmsnorm":
            return nn.RMSNorm(d)
        if op == "trainlab_rmsnorm":
            return TrainlabRMSNorm(d)
        if op == "conv1d":
            return nn.Conv1d(d, d, 3, padding=1)
        return nn.Linear(d, d, bias=op != "matmul_weight")

    def inputs(self, generator: torch.Generator):
        B, T = self.batch, self.length
        if self.kind == "tokens":
            x = torch.randint(0, self.classes, (B, T), generator=generator)
        elif self.kind == "features":
            x = torch.randn(B, T, 3, generator=generator, dtype=torch.float64)
        else:
            x = torch.randn(B, 2, 3, 3, generator=generator, dtype=torch.float64)
        positions = 16 if self.kind == "image" else T
        y = torch.randint(0, self.classes, (B,) if self.pool else (B, positions), generator=generator)
        if not self.pool:
            y[:, -1] = -100  # an ignored position
        return x, y

    def forward(self, x):
        h = self.stem(x)
        if self.kind == "image":
            h = h.flatten(2).transpose(1, 2)  # [B, positions, width]
        for op, layer in zip(self.ops, self.body):
            h = self.apply_block(op, layer, h)
        out = F.linear(h, self.stem.weight) if self.tied else self.head(h)
        return out.mean(1) if self.pool else out

    def apply_block(self, op: str, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        late = self.step >= self.late
        if op == "linear":
            return torch.tanh(layer(h))
        if op == "conv1d":
            return layer(h.transpose(1, 2)).transpose(1, 2)
        if op == "seq_first":  # [T, B, D] into the Linear
            return torch.tanh(layer(h.transpose(0, 1))).transpose(0, 1)
        if op == "functional":  # the module's weight, the module never called
            return torch.tanh(F.linear(h, layer.weight, layer.bias))
        if op == "matmul_weight":
            return torch.tanh(h @ layer.weight.T)
        if op == "reuse_late":
            h = torch.tanh(layer(h))
            return torch.tanh(layer(h)) if late else h
        if op == "functional_late":
            h = torch.tanh(layer(h))
            return h + F.linear(h, layer.weight) if late else h
        return layer(h)


def oracle(model: nn.Module, x, y, C: float | None):
    """Per-sample gradients by vmap(grad) of the model applied to one sample; clipped at C
    (None: not clipped), summed and divided by the batch size. Returns (norms, mean grads)."""
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}

    def loss_one(params, xi, yi):
        out = functional_call(model, {**params, **fixed}, (xi.unsqueeze(0),))
        return per_sample_loss(out, yi.unsqueeze(0)).squeeze(0)

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(trainable, x, y)
    norms = torch.stack([g.reshape(len(x), -1).pow(2).sum(1) for g in grads.values()], 1).sum(1).sqrt()
    factors = clip_factors(norms, C) if C is not None else torch.ones_like(norms)
    return norms, {n: torch.tensordot(factors, g, dims=1) / len(x) for n, g in grads.items()}


def run_case(seed: int, mode: str) -> str:
    """'exact' or 'refused at step k: message'; raises AssertionError on a silent difference."""
    torch.manual_seed(seed)
    base = RandomNet(seed).double()
    generator = torch.Generator().manual_seed(seed)
    batches = [base.inputs(generator) for _ in range(STEPS)]
    norms, _ = oracle(base, *batches[0], None)
    C = float(norms.median())  # binding: about half the samples are clipped at step 1
    model = copy.deepcopy(base)
    try:
        engine = DPEngine(model, mode, max_grad_norm=C, tile=2)
    except UserError as err:
        return f"refused at construction: {err}"
    for step, (x, y) in enumerate(batches, start=1):
        model.step = step
        clip = None if mode == "no_dp" else C
        want_norms, want = oracle(model, x, y, clip)
        try:
            result = engine.backward(x, y)
        except UserError as err:
            assert "\n" not in str(err)
            return f"refused at step {step}: {err}"
        where = f"case {seed} ({model.kind}, ops {model.ops}, tied {model.tied}, pool {model.pool}), mode {mode}, step {step}"
        if result.norms is not None:
            torch.testing.assert_close(result.norms, want_norms, rtol=1e-10, atol=1e-12, msg=f"{where}: norms")
        for name, p in model.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, f"{where}: frozen {name} got a gradient"
                continue
            torch.testing.assert_close(p.grad, want[name], rtol=1e-10, atol=1e-12, msg=f"{where}: {name}")
        with torch.no_grad():  # the same update in every mode: the oracle's
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p -= 0.5 * want[name]
    return "exact"


@pytest.mark.parametrize("mode", MODES)
def test_random_models_are_exact_or_refused_in_every_mode(mode):
    outcomes = {seed: run_case(seed, mode) for seed in range(CASES)}
    clean = [seed for seed in outcomes if not RandomNet(seed).hostile]
    wrongly_refused = {seed: outcomes[seed] for seed in clean if outcomes[seed] != "exact"}
    assert not wrongly_refused, f"models with no hostile pattern were refused: {wrongly_refused}"
    refused = [seed for seed, outcome in outcomes.items() if outcome != "exact"]
    if mode in ("per_sample", "no_dp"):
        assert not refused, {seed: outcomes[seed] for seed in refused}  # torch.func handles any use
    else:
        assert len(clean) >= CASES // 4 and refused, "the draw should hold both clean and refused cases"
        reasons = " ".join(outcomes.values())
        for reason in ("cannot establish the batch dimension", "was not called", "used 2 times", "ran twice"):
            assert reason in reasons, f"no case was refused for: {reason}"


def test_the_hostile_patterns_are_each_drawn():
    drawn = {op for seed in range(CASES) for op in RandomNet(seed).ops} | {
        "tied" for seed in range(CASES) if RandomNet(seed).tied}
    assert set(HOSTILE_OPS) | {"tied"} <= drawn
    shapes = {(RandomNet(s).length == RandomNet(s).batch) for s in range(CASES) if "seq_first" in RandomNet(s).ops}
    assert True in shapes  # a sequence-first layer with T == B
