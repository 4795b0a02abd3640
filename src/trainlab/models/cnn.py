"""A tiny CNN: conv 3x3 (no bias) + BatchNorm + SiLU, global average pool, two linears."""

import torch
from torch import nn


ACTIVATIONS = {"silu": nn.functional.silu, "relu": nn.functional.relu}


class SmallCNN(nn.Module):
    def __init__(self, channels: int = 12, hidden: int = 11, classes: int = 10, activation: str = "silu"):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        self.act = ACTIVATIONS[activation]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(images)))
        x = x.mean(dim=(2, 3))  # global average pool
        return self.fc2(self.act(self.fc1(x)))


class PlainCNN(nn.Module):
    """Two convolutions without batch norm (each sample's gradient is its own, as DP-SGD
    needs), SiLU, global average pool, a linear head."""

    def __init__(self, channels: int = 8, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * channels, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.silu(self.conv1(images))
        x = nn.functional.silu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))
