"""MLP on down-sampled images: adaptive average pooling to k x k, SiLU hidden layers."""

import torch
from torch import nn


class PooledMLP(nn.Module):
    def __init__(self, pool: int = 6, hidden: tuple[int, ...] = (8,), classes: int = 10):
        super().__init__()
        # pooling has no parameters: it is data pre-processing kept inside the model so that
        # every study (faults on activations, Hessians) sees the same function of the pixels
        self.pool = nn.AdaptiveAvgPool2d(pool)
        widths = [pool * pool, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.SiLU()]
        layers.append(nn.Linear(widths[-1], classes))
        self.net = nn.Sequential(*layers)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The parameter-free part (pooling): batched runs apply it once to the whole dataset."""
        return self.pool(images).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(images))
