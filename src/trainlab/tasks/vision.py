"""A torchvision dataset and model, read from local files (nothing is downloaded).

    task:
      name: vision
      dataset: CIFAR10                   # any torchvision.datasets class with (root, train, transform), or ImageFolder
      root: data/cifar10                 # the folder that holds the dataset's own files
      model: torchvision.models:resnet18
      model_args: {num_classes: 10}
      augment: true                      # random crop (padding 4) and horizontal flip on training images

Images become tensors normalised with the training set's per-channel mean and std (computed
once). The training split is loaded batch by batch, so augmentation differs every epoch and
is seeded per sample (tasks/loading.py). For ImageFolder, `root` holds `train/` and `test/`.
Needs torchvision built for the installed torch (`pip install 'trainlab[vision]'`).
"""

import functools

import torch
from pydantic import Field

from ..errors import SpecError, UserError, one_line
from ..options import Strict
from ..plugin import register_task
from .base import Task, TaskData
from .loading import as_task_data
from .python import build_model


class VisionOptions(Strict):
    dataset: str = Field(description="a torchvision.datasets class name (CIFAR10, CIFAR100, MNIST, FashionMNIST, "
                                     "SVHN-style root/train/transform classes) or ImageFolder")
    root: str = Field(description="the folder holding the dataset's files")
    model: str = Field("torchvision.models:resnet18", description="import path of a model factory")
    model_args: dict = Field(default_factory=lambda: {"num_classes": 10})
    augment: bool = Field(False, description="random crop with 4-pixel padding and horizontal flips while training")
    n_train: int | None = Field(None, gt=0, description="use the first N training images")
    n_test: int | None = Field(None, gt=0, description="use the first N held-out images")


def import_torchvision():
    try:
        import torchvision
    except Exception as exc:  # also a torchvision built for another torch, which fails on import
        raise UserError(f"task vision needs torchvision built for this torch ({one_line(exc)}): pip install "
                        "'trainlab[vision]'") from None
    return torchvision


def local_files(cls):
    """torchvision checks the CIFAR family's files against the checksums of the official
    release; files in the same format that a researcher made or re-packed are read when they
    are all there (nothing is downloaded either way)."""
    if not (hasattr(cls, "train_list") and hasattr(cls, "test_list")):
        return cls

    class LocalFiles(cls):  # torchvision checks a file's existence alone when its checksum is None
        train_list = [[name, None] for name, _ in cls.train_list]
        test_list = [[name, None] for name, _ in cls.test_list]
        meta = {**getattr(cls, "meta", {}), "md5": None}

    LocalFiles.__name__ = cls.__name__
    return LocalFiles


def open_split(torchvision, opts, train: bool, transform):
    datasets = torchvision.datasets
    if opts.dataset == "ImageFolder":
        return datasets.ImageFolder(f"{opts.root}/{'train' if train else 'test'}", transform=transform)
    cls = getattr(datasets, opts.dataset, None)
    if cls is None:
        raise SpecError("task.dataset", f"torchvision.datasets has no {opts.dataset!r}")
    cls = local_files(cls)
    try:
        return cls(opts.root, train=train, transform=transform, download=False)
    except (RuntimeError, OSError, TypeError) as exc:
        raise SpecError("task.root", f"{opts.dataset} not readable in {opts.root!r} ({one_line(exc)}); nothing is "
                                     "downloaded: put the dataset's own files there") from None


def first(dataset, n: int | None):
    return dataset if n is None or n >= len(dataset) else torch.utils.data.Subset(dataset, range(n))


@functools.lru_cache(maxsize=4)
def channel_stats(opts_json: str) -> tuple[list, list]:
    """Per-channel mean and std of the training images (of up to 5,000), for normalisation."""
    torchvision, opts = import_torchvision(), VisionOptions.model_validate_json(opts_json)
    plain = first(open_split(torchvision, opts, True, torchvision.transforms.ToTensor()), opts.n_train)
    images = torch.stack([plain[i][0] for i in range(min(len(plain), 5000))])
    return images.mean((0, 2, 3)).tolist(), images.std((0, 2, 3)).clamp(min=1e-6).tolist()


@register_task
class Vision(Task):
    name, Options = "vision", VisionOptions
    doc = "a torchvision dataset from local files and a torchvision (or any) model, optional augmentation"

    def load(self, opts, seed: int = 0) -> TaskData:
        torchvision = import_torchvision()
        t = torchvision.transforms
        mean, std = channel_stats(opts.model_dump_json())
        plain = [t.ToTensor(), t.Normalize(mean, std)]
        augment = [t.RandomCrop(self.image_size(torchvision, opts), padding=4), t.RandomHorizontalFlip()] if opts.augment else []
        train = first(open_split(torchvision, opts, True, t.Compose(augment + plain)), opts.n_train)
        test = first(open_split(torchvision, opts, False, t.Compose(plain)), opts.n_test)
        data = as_task_data(train, test, source=f"{opts.dataset} from {opts.root}", where="task", seed=seed)
        if opts.augment:
            data.notes.append("training images augmented (random crop with padding 4, horizontal flip), seeded per sample")
        return data

    @staticmethod
    def image_size(torchvision, opts) -> int:
        image = first(open_split(torchvision, opts, True, torchvision.transforms.ToTensor()), 1)[0][0]
        return int(image.shape[-1])

    def make_model(self, opts, data: TaskData):
        return build_model(opts.model, opts.model_args, "task.model")
