"""A trained network packaged for deployment: takes images in [0, 1], normalises them itself."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Normalized(nn.Module):
    """`net((x - mean) / std)`: the training normalisation travels with the model."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)
