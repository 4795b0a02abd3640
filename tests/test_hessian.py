import numpy as np
import torch

from conftest import needs_shakespeare, small_spec
from trainlab.engine import Trial
from trainlab.curvature.hessian import (HessianOperator, analysis_mode, exact_hessian, hutchinson_trace, power_iteration,
                                     spectral_density, top_eigenpairs)
from trainlab.spec import load_spec


def operator_for(task: dict, n: int):
    spec = load_spec(small_spec(task=task, arms=[{"optimizer": "sgd", "lr": 0.1}], plan__dtype="float64"))
    trial = Trial(spec)
    model = trial.arms[0].model
    x, y = trial.x_train[:n], trial.y_train[:n]

    def loss_fn(m, a, b):
        return trial.task.loss(m(a), b, opts=trial.options)

    return HessianOperator(model, loss_fn, [(x, y)]), model, loss_fn, (x, y)


def finite_difference_columns(model, loss_fn, batch, columns, h=1e-5):
    params = list(model.parameters())
    theta = torch.nn.utils.parameters_to_vector(params).detach().clone()

    def gradient(at):
        torch.nn.utils.vector_to_parameters(at, params)
        with analysis_mode(model):
            return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(model, *batch), params)])

    out = []
    for i in columns:
        step = torch.zeros_like(theta)
        step[i] = h
        out.append((gradient(theta + step) - gradient(theta - step)) / (2 * h))
    torch.nn.utils.vector_to_parameters(theta, params)
    return torch.stack(out, dim=1)


def check_routes(op, model, loss_fn, batch):
    H = exact_hessian(op)
    assert torch.allclose(H, H.T, atol=1e-12 * H.abs().max())  # double backward: symmetric
    columns = [0, 1, op.size // 3, op.size // 2, op.size - 2, op.size - 1]
    fd = finite_difference_columns(model, loss_fn, batch, columns)
    assert (fd - H[:, columns]).abs().max() <= 1e-6 * H.abs().max()
    exact = np.linalg.eigvalsh(H.numpy())[::-1][:5]
    for method in ("lanczos", "eigsh"):
        values, vectors, products = top_eigenpairs(op, k=5, method=method, tol=1e-10)
        assert np.max(np.abs(values - exact) / np.abs(exact)) < 1e-8, method
        assert vectors.shape == (op.size, 5) and products > 0
        residual = H.numpy() @ vectors - vectors * values  # eigenvectors, not only values
        assert np.abs(residual).max() < 1e-3 * abs(values[0]), method
    return H


def test_mlp_exact_eigsh_and_finite_differences_agree():
    op, model, loss_fn, batch = operator_for({"name": "mnist-mlp", "source": "offline", "n_train": 512, "n_test": 64}, 256)
    assert op.size == 386
    H = check_routes(op, model, loss_fn, batch)
    trace, stderr = hutchinson_trace(op, samples=400, seed=1)
    assert abs(trace - torch.trace(H).item()) < 4 * stderr
    density = spectral_density(op, runs=4, steps=60, seed=0)
    assert abs(np.trapezoid(density["density"], density["grid"]) - 1) < 0.02
    eig = np.linalg.eigvalsh(H.numpy())
    assert density["nodes"].min() >= eig.min() - 1e-8 and density["nodes"].max() <= eig.max() + 1e-8
    top, _ = power_iteration(op, k=1, tol=1e-10, max_products=3000)
    assert abs(top[0] - eig.max()) < 1e-6 * abs(eig.max())


@needs_shakespeare
def test_gpt_with_layernorm_and_attention_exact_eigsh_and_finite_differences_agree():
    op, model, loss_fn, batch = operator_for({"name": "shakespeare-gpt"}, 48)
    assert op.size == 952
    check_routes(op, model, loss_fn, batch)
    assert model.training  # the analysis restored the mode


def test_batchnorm_runs_in_eval_mode_and_says_so():
    op, model, loss_fn, batch = operator_for({"name": "mnist-cnn", "source": "offline", "n_train": 256, "n_test": 64}, 64)
    assert any("BatchNorm" in note for note in op.notes)
    running = model.bn.running_mean.clone()
    v = torch.randn(op.size, dtype=torch.float64)
    assert torch.allclose(op.hvp(v), op.hvp(v))  # deterministic: no batch statistics in play
    assert torch.equal(model.bn.running_mean, running) and model.training


def test_dataset_hessian_is_the_size_weighted_mean_of_chunk_hessians():
    op, model, loss_fn, (x, y) = operator_for({"name": "mnist-mlp", "source": "offline", "n_train": 512, "n_test": 64},
                                              300)
    chunked = HessianOperator(model, loss_fn, [(x[:100], y[:100]), (x[100:], y[100:])])
    v = torch.randn(op.size, dtype=torch.float64)
    assert torch.allclose(op.hvp(v), chunked.hvp(v), rtol=1e-10, atol=1e-14)
    assert torch.allclose(op.gradient(), chunked.gradient(), rtol=1e-10, atol=1e-14)
