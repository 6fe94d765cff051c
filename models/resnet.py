"""Residual networks for small (CIFAR-sized) images: a CIFAR ResNet-18 and the fast ResNet-9."""

from __future__ import annotations

import torch
from torch import nn


def resnet18(num_classes: int, in_channels: int, image_size: int = 32) -> nn.Module:
    """CIFAR ResNet-18: torchvision's ResNet with a 3x3 stride-1 stem and no max-pool.

    The ImageNet stem (7x7 stride 2 + max-pool) would shrink a 32x32 image to 8x8 before the
    first block; the CIFAR variant keeps full resolution there. `image_size` is accepted for
    the common builder signature only: the adaptive average pool makes the net size-agnostic.
    """
    # Imported here: torchvision pulls in torch._dynamo (about 1 s), which a trial of any
    # other model, and every search driver, would otherwise pay at start-up.
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (no bias: BatchNorm follows), BatchNorm, ReLU: the ResNet-9 building unit."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    """x + f(x): the identity shortcut around a stack of same-width conv_bn units."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Scale(nn.Module):
    """Multiply by a constant: Page's 0.125 logit scaling, which keeps early softmax soft."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def resnet9(num_classes: int, in_channels: int, image_size: int = 32) -> nn.Module:
    """ResNet-9 of David Page's DAWNBench CIFAR-10 entry (the airbench lineage).

    Chosen because it reaches ~94% on CIFAR-10 in a few epochs, so trials are cheap. The three
    max-pools take 32 -> 4, 28 -> 3 and 8 -> 1; the adaptive max-pool then makes any of these 1x1.
    `image_size` is accepted for the common builder signature only.
    """
    return nn.Sequential(
        _conv_bn(in_channels, 64),  # prep
        _conv_bn(64, 128),  # layer1
        nn.MaxPool2d(2),
        _Residual(_conv_bn(128, 128), _conv_bn(128, 128)),
        _conv_bn(128, 256),  # layer2
        nn.MaxPool2d(2),
        _conv_bn(256, 512),  # layer3
        nn.MaxPool2d(2),
        _Residual(_conv_bn(512, 512), _conv_bn(512, 512)),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(512, num_classes, bias=False),
        _Scale(0.125),
    )
