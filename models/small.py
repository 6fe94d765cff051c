"""Small baselines for small images: the classic MNIST conv net and a two-hidden-layer MLP."""

from __future__ import annotations

from torch import nn


def cnn(num_classes: int, in_channels: int, image_size: int = 32, width: int = 32) -> nn.Module:
    """The classic MNIST conv net (Keras/PyTorch examples), sized from `image_size`.

    Two unpadded 3x3 convs (`width`, 2 * `width` channels; 32 and 64 in the classic net) and
    a 2x2 max-pool leave (image_size - 4) // 2 pixels a side; the first linear layer
    (4 * `width` units) is sized from that, so 8x8, 28x28 and 32x32 all work.
    """
    side = (image_size - 4) // 2
    if side < 1:
        raise ValueError(f"cnn needs image_size >= 6, got {image_size}")
    if width < 1:
        raise ValueError(f"cnn needs width >= 1, got {width}")
    return nn.Sequential(
        nn.Conv2d(in_channels, width, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(2 * width * side * side, 4 * width),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4 * width, num_classes),
    )


def mlp(num_classes: int, in_channels: int, image_size: int = 32, hidden: int = 256) -> nn.Module:
    """Flatten, then two `hidden`-wide ReLU layers: the no-convolution baseline."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
