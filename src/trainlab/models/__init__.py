"""Small models whose every parameter a reader can account for."""

from .cnn import SmallCNN
from .gpt import GPT, GPTConfig
from .mlp import PooledMLP

__all__ = ["GPT", "GPTConfig", "PooledMLP", "SmallCNN"]
