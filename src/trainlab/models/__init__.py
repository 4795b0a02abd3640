"""Small models whose every parameter a reader can account for."""

from .cnn import SmallCNN
from .denoiser import Denoiser
from .gpt import GPT, GPTConfig
from .mlp import PooledMLP
from .moe import MoEConfig, MoELM

__all__ = ["Denoiser", "GPT", "GPTConfig", "MoEConfig", "MoELM", "PooledMLP", "SmallCNN"]
