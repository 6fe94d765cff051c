"""A small network of one's own, searched by `conf/own_model/search.yaml`.

The factory contract (README, "Search your own model"): called with the dataset's
`num_classes`, `in_channels` and `image_size` and the config's `model.kwargs`, it returns a
`torch.nn.Module` mapping a normalised (N, in_channels, image_size, image_size) batch to
(N, num_classes) logits. Nothing here imports the project.
"""

from __future__ import annotations

from torch import nn


def separable(c_in: int, c_out: int) -> nn.Sequential:
    """A depthwise 3x3 convolution, then a pointwise one: MobileNet's building block."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def tinynet(num_classes: int, in_channels: int, image_size: int, width: int = 24) -> nn.Module:
    """Two separable blocks and a pooled linear head; `width` channels (a model kwarg)."""
    del image_size  # global pooling: any image size works
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        separable(width, width),
        nn.MaxPool2d(2),
        separable(width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
