"""The index stream: which training samples each step uses. One stream feeds every arm."""

import torch

SAMPLERS = ("shuffle", "replacement", "full", "poisson")


class IndexStream:
    """Yields one LongTensor of sample indices per step from a seeded generator.

    shuffle:      a fresh permutation each epoch, cut into batches, the remainder dropped
    replacement:  each batch drawn uniformly with replacement
    full:         every sample, in order, every step (gradient descent)
    poisson:      each sample joins the batch independently with probability batch_size / n
                  (the sampling DP-SGD's privacy accounting assumes); batch sizes vary
    """

    def __init__(self, n: int, batch_size: int, sampler: str, seed: int):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}")
        if sampler in ("shuffle", "poisson") and batch_size > n:
            raise ValueError(f"batch_size {batch_size} is larger than the training set ({n})")
        self.n, self.batch_size, self.sampler = n, batch_size, sampler
        self.generator = torch.Generator().manual_seed(seed)
        self._epoch_batches: list[torch.Tensor] = []

    @property
    def steps_per_epoch(self) -> int:
        if self.sampler == "full":
            return 1
        return max(1, self.n // self.batch_size)

    def next_batch(self) -> torch.Tensor:
        if self.sampler == "full":
            return torch.arange(self.n)
        if self.sampler == "replacement":
            return torch.randint(self.n, (self.batch_size,), generator=self.generator)
        if self.sampler == "poisson":
            keep = torch.rand(self.n, generator=self.generator) < self.batch_size / self.n
            return keep.nonzero().squeeze(1)
        if not self._epoch_batches:
            perm = torch.randperm(self.n, generator=self.generator)
            usable = (self.n // self.batch_size) * self.batch_size
            self._epoch_batches = list(perm[:usable].split(self.batch_size))[::-1]
        return self._epoch_batches.pop()


class GeneratedStream:
    """Fresh samples every step from a task's sampler and a seeded generator (no fixed set).

    `sample(batch_size, generator)` returns (inputs, targets); an epoch is
    `samples_per_epoch // batch_size` steps."""

    sampler = "generated"

    def __init__(self, sample, samples_per_epoch: int, batch_size: int, seed: int):
        self.sample, self.batch_size = sample, batch_size
        self.samples_per_epoch = samples_per_epoch
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.samples_per_epoch // self.batch_size)

    def next_batch(self):
        return self.sample(self.batch_size, self.generator)


class FixedIndices:
    """A stream that gives the same indices every step (an example batch)."""

    def __init__(self, indices):
        self.indices = torch.tensor(list(indices))

    def next_batch(self) -> torch.Tensor:
        return self.indices
