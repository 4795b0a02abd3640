"""Training data beyond tensors in memory: map-style Datasets, loaded batch by batch.

The trainer draws one stream of sample indices per trial (shared by every arm) and loads
each step's batch once. For a Dataset, `DatasetBatches` loads it through a DataLoader whose
batch sampler is that stream, with worker processes when `plan.loader_workers` asks for them.
Every sample is loaded under a random state seeded from (trial seed, step, index), so random
transforms and augmentation give the same numbers whatever the number of loader workers,
and in every executor.
"""

import hashlib
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import SpecError, one_line
from .base import TaskData


def is_dataset(obj) -> bool:
    return isinstance(obj, Dataset) or (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")
                                        and not isinstance(obj, (tuple, list, dict, torch.Tensor)))


def as_pair(part, where: str, name: str) -> tuple:
    """(inputs, targets) tensors from a tuple of two tensors (or a dict of input tensors)."""
    if not (isinstance(part, (tuple, list)) and len(part) == 2):
        raise SpecError(where, f"the {name} split must be a Dataset or a tuple (inputs, targets), got a "
                               f"{type(part).__name__}")
    inputs, targets = part
    targets = torch.as_tensor(targets)
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    if not isinstance(first, torch.Tensor) or len(first) != len(targets) or len(targets) == 0:
        raise SpecError(where, f"the {name} split's inputs and targets must be tensors with the same, non-zero "
                               f"number of samples")
    return inputs, targets


def materialise(dataset, where: str, name: str, seed: int = 0) -> tuple:
    """A Dataset loaded once into (inputs, targets) tensors (its transforms seeded per sample)."""
    if len(dataset) == 0:
        raise SpecError(where, f"the {name} Dataset is empty")
    batches = list(DataLoader(Seeded(dataset, seed), batch_sampler=[[(-1, i) for i in range(len(dataset))]],
                              collate_fn=collate_pairs(where, name)))
    return batches[0][1], batches[0][2]


def as_task_data(train, test, source: str, where: str, seed: int = 0) -> TaskData:
    x_test, y_test = materialise(test, where, "held-out", seed) if is_dataset(test) else as_pair(test, where, "held-out")
    if is_dataset(train):
        if len(train) == 0:
            raise SpecError(where, "the training Dataset is empty")
        collate_pairs(where, "training")([(0, *unpack(train[0], where, "training"))])  # one item checks the shape
        return TaskData(None, None, x_test, y_test, source=f"{source}: a Dataset of {len(train):,} training samples",
                        train_set=train)
    x_train, y_train = as_pair(train, where, "training")
    return TaskData(x_train, y_train, x_test, y_test, source=source)


def unpack(item, where: str, name: str) -> tuple:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise SpecError(where, f"a {name} Dataset item must be (input, target), got a {type(item).__name__}")


def collate_pairs(where: str, name: str):
    """[(index, input, target), ...] -> (indices, inputs, targets)."""
    def collate(items):
        try:
            indices = torch.tensor([index for index, _, _ in items])
            return indices, default_collate([x for _, x, _ in items]), torch.as_tensor(default_collate([y for _, _, y in items]))
        except (TypeError, RuntimeError) as exc:
            raise SpecError(where, f"cannot batch the {name} Dataset's items (give tensors or numbers; "
                                   f"{one_line(exc)})") from None
    return collate


class Seeded(Dataset):
    """Item (step, i) of a dataset, loaded with torch, NumPy and `random` seeded from (seed, step,
    i) and their states restored afterwards: augmentation is reproducible per sample."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        step, index = key
        seed = int.from_bytes(hashlib.sha256(f"{self.seed}/{step}/{index}".encode()).digest()[:4], "little")
        states = torch.get_rng_state(), np.random.get_state(), random.getstate()
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            x, y = unpack(self.dataset[index], "task.data", "training")
        finally:
            torch.set_rng_state(states[0])
            np.random.set_state(states[1])
            random.setstate(states[2])
        return index, x, y


class DatasetBatches:
    """The batches of a trial's index stream, loaded from a Dataset (one load per step, shared
    by every arm). `next()` -> (indices, inputs, targets)."""

    def __init__(self, dataset, stream, steps: int, seed: int, workers: int = 0):
        def batches():
            for step in range(1, steps + 1):
                yield [(step, int(i)) for i in stream.next_batch()]

        self.loader = DataLoader(Seeded(dataset, seed), batch_sampler=batches(), num_workers=workers,
                                 collate_fn=collate_pairs("task.data", "training"), persistent_workers=False,
                                 prefetch_factor=2 if workers else None)
        self.iterator = iter(self.loader)

    def next(self):
        return next(self.iterator)
