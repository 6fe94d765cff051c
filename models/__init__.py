"""Model registry: build a network by name for a dataset's classes, channels and image size."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from models.normalized import Normalized
from models.resnet import resnet9, resnet18
from models.small import cnn, mlp

__all__ = ["Normalized", "build", "names"]

Builder = Callable[[int, int, int], nn.Module]

_REGISTRY: dict[str, Builder] = {
    "cnn": cnn,
    "mlp": mlp,
    "resnet18": resnet18,
    "resnet9": resnet9,
}


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def build(name: str, num_classes: int, in_channels: int, image_size: int = 32) -> nn.Module:
    """Build model `name` for `num_classes` outputs on `in_channels` x `image_size`^2 inputs.

    Raises ValueError naming the known models, so a typo in a search config fails loudly.
    """
    try:
        builder = _REGISTRY[name]
    except KeyError:
        known = ", ".join(names())
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
    return builder(num_classes, in_channels, image_size)
