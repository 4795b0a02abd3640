"""Datasets (MNIST IDX, offline MNIST, tiny-shakespeare) and the index samplers."""

from .mnist import load_mnist
from .paths import data_dirs, find_data_file
from .samplers import IndexStream
from .shakespeare import load_shakespeare_text

__all__ = ["IndexStream", "data_dirs", "find_data_file", "load_mnist", "load_shakespeare_text"]
