"""The two-layer denoiser: fc1 (d -> h), activation tanh(z)^3, fc2 (h -> d), no output activation."""

import torch
from torch import nn


class Denoiser(nn.Module):
    def __init__(self, dim: int = 1024, hidden: int = 512, encoder_scale: float = 0.03, decoder_scale: float = 0.03):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        for layer, scale in ((self.fc1, encoder_scale), (self.fc2, decoder_scale)):
            nn.init.xavier_normal_(layer.weight)
            with torch.no_grad():
                layer.weight.mul_(scale)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)) ** 3)
