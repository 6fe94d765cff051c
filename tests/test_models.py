"""Behaviour of the model registry: shapes per dataset, the CIFAR ResNet stem, trainability."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import models

# name -> (in_channels, image_size, num_classes)
DATASETS = {
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "mnist": (1, 28, 10),
    "digits": (1, 8, 10),
}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("name", models.names())
def test_every_model_outputs_batch_by_classes_for_every_dataset_shape(name, dataset):
    in_channels, size, num_classes = DATASETS[dataset]
    model = models.build(name, num_classes, in_channels, size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_names_lists_the_four_models_sorted():
    assert models.names() == ["cnn", "mlp", "resnet18", "resnet9"]


def test_unknown_name_raises_value_error_listing_known_names():
    with pytest.raises(ValueError, match="unknown model 'vgg'") as info:
        models.build("vgg", 10, 3)
    assert "known: cnn, mlp, resnet18, resnet9, or an import path" in str(info.value)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("in_channels", "num_classes"), [(3, 10), (3, 100), (1, 10)])
def test_resnet18_is_torchvision_resnet18_with_a_3x3_stem(in_channels, num_classes):
    model = models.build("resnet18", num_classes, in_channels)
    reference = torchvision.models.resnet18(num_classes=num_classes)
    stem_7x7 = 64 * 3 * 7 * 7
    stem_3x3 = 64 * in_channels * 3 * 3
    assert _count(model) == _count(reference) - stem_7x7 + stem_3x3
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert model.conv1.in_channels == in_channels
    assert isinstance(model.maxpool, nn.Identity)


def test_resnet18_for_cifar10_has_11_17m_parameters():
    assert _count(models.build("resnet18", 10, 3)) == 11_173_962


@pytest.mark.parametrize("name", ["resnet18", "resnet9"])
def test_resnet_trains_on_synthetic_cifar_batches(name):
    torch.manual_seed(0)
    model = models.build(name, 10, 3).train()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    for _ in range(3):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    unchanged = [k for k, p in model.named_parameters() if torch.equal(p, before[k])]
    assert unchanged == []
