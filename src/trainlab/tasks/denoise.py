"""The two-layer denoiser of sparse signals (fresh samples every step)."""

import torch
from pydantic import Field, model_validator

from ..data.synthetic import sparse_signals
from ..models import Denoiser
from ..options import Strict
from ..plugin import register_task
from .base import Task, TaskData


class DenoiseOptions(Strict):
    dim: int = Field(1024, gt=1, description="signal dimension d")
    hidden: int = Field(512, gt=0, description="hidden width h")
    sparsity: int = Field(2, gt=0, description="ones per clean signal")
    noise_variance: float = Field(0.005, ge=0)
    lambda_on: float = Field(16.0, gt=0, description="weight of the on-support squared error")
    encoder_scale: float = Field(0.03, gt=0, description="fc1 init: Xavier-normal times this")
    decoder_scale: float = Field(0.03, gt=0, description="fc2 init: Xavier-normal times this")
    l2_encoder: float = Field(0.0, ge=0, description="L2 penalty on fc1.weight")
    l2_decoder: float = Field(0.0, ge=0, description="L2 penalty on fc2.weight")
    samples_per_epoch: int = Field(300_000, gt=0, description="fresh training samples per epoch")
    n_val: int = Field(5000, gt=0, description="validation samples (fixed per trial seed)")

    @model_validator(mode="after")
    def _sparsity(self):
        if self.sparsity > self.dim:
            raise ValueError(f"sparsity ({self.sparsity}) cannot exceed dim ({self.dim})")
        return self


@register_task
class Denoise2Layer(Task):
    name, Options = "denoise-2layer", DenoiseOptions
    cross_entropy = False
    doc = "two-layer denoiser of sparse signals, tanh^3 hidden units, fresh samples every step"

    def load(self, opts, seed: int = 0) -> TaskData:
        def sample(n: int, generator: torch.Generator):
            return sparse_signals(n, opts.dim, opts.sparsity, opts.noise_variance, generator)

        x_val, y_val = sample(opts.n_val, torch.Generator().manual_seed(seed))
        return TaskData(None, None, x_val, y_val, sample=sample, samples_per_epoch=opts.samples_per_epoch,
                        source=f"sparse signals: d {opts.dim}, {opts.sparsity} ones, noise variance "
                               f"{opts.noise_variance}, generated from the trial seed")

    def make_model(self, opts, data):
        return Denoiser(opts.dim, opts.hidden, opts.encoder_scale, opts.decoder_scale)

    def loss(self, output, target, reduction: str = "mean", opts=None):
        """scaled_mse: lambda_on * sum_on (out - x*)^2 + sum_off out^2, summed over coordinates."""
        weight = 1.0 + ((opts or self.Options()).lambda_on - 1.0) * target
        per_sample = ((output - target) ** 2 * weight).sum(dim=1)
        return per_sample.mean() if reduction == "mean" else per_sample.sum()

    def loss_items(self, target, opts=None):
        return len(target)  # the loss is summed over coordinates and averaged over samples

    def count_correct(self, output, target, opts=None):
        """Support recovery: the largest `sparsity` outputs sit exactly on the clean signal's ones."""
        k = int(target[0].sum().item())
        guess = output.topk(k, dim=1).indices.sort(dim=1).values
        truth = target.topk(k, dim=1).indices.sort(dim=1).values
        return (guess == truth).all(dim=1).sum(), len(target)

    def penalty(self, opts, model):
        terms = [opts.l2_encoder * model.fc1.weight.square().sum() if opts.l2_encoder else None,
                 opts.l2_decoder * model.fc2.weight.square().sum() if opts.l2_decoder else None]
        terms = [t for t in terms if t is not None]
        return sum(terms) if terms else None
