from __future__ import annotations

import pytest
import torch

from search.config import DataConfig
from search.trial import data


def test_digits_split_is_deterministic_and_disjoint():
    a = data.load(DataConfig(dataset="digits", split_seed=3))
    b = data.load(DataConfig(dataset="digits", split_seed=3))
    c = data.load(DataConfig(dataset="digits", split_seed=4))
    assert torch.equal(a.val.y, b.val.y) and torch.equal(a.val.x, b.val.x)
    assert not torch.equal(a.val.x, c.val.x)
    assert len(a.train) + len(a.val) == 1797 and len(a.val) == round(1797 * 0.2)
    assert a.train.x.dtype == torch.uint8 and a.train.x.shape[1:] == (1, 8, 8)
    # No image is in both splits.
    train_rows = {bytes(r) for r in a.train.x.flatten(1).numpy()}
    overlap = sum(bytes(r) in train_rows for r in a.val.x.flatten(1).numpy())
    assert overlap < len(a.val) // 10  # digits has a few duplicate images, not more


def test_synthetic_has_the_requested_shape_and_classes():
    ds = data.load(DataConfig(dataset="synthetic", synthetic_samples=100,
                              synthetic_shape=(3, 16, 16), synthetic_classes=7))
    assert ds.train.x.shape[1:] == (3, 16, 16) and ds.num_classes == 7
    assert int(ds.train.y.max()) < 7


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "mnist", "fashion_mnist"])
def test_missing_dataset_says_which_files_where(tmp_path, dataset):
    with pytest.raises(data.DatasetMissing) as err:
        data.load(DataConfig(dataset=dataset, root=str(tmp_path)))
    message = str(err.value)
    assert str(tmp_path) in message and data.EXPECTED_FILES[dataset] in message
    assert "data.download: true" in message and "\n" not in message


def test_loader_normalises_and_covers_every_sample_once_per_epoch():
    ds = data.load(DataConfig(dataset="digits"))
    g = torch.Generator().manual_seed(0)
    loader = data.DeviceLoader(ds.train, 100, ds.mean, ds.std, train=True, generator=g)
    ys = torch.cat([y for _, y in loader])
    assert len(ys) == len(loader) * 100  # full batches only
    xs = torch.cat([x for x, _ in data.DeviceLoader(ds.train, 100, ds.mean, ds.std, train=False)])
    assert len(xs) == len(ds.train)
    assert abs(xs.mean().item()) < 1e-3 and abs(xs.std().item() - 1) < 1e-2


def test_random_crop_shifts_within_the_padding():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = data.random_crop(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # Each output is the image shifted by at most one pixel (zeros fill the border).
    for img in out:
        found = False
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = torch.nn.functional.pad(x[0], (1, 1, 1, 1))[
                    :, 1 + dy : 5 + dy, 1 + dx : 5 + dx
                ]
                found |= torch.equal(img, shifted)
        assert found
    assert len({bytes(o.flatten().numpy()) for o in out}) > 1


def test_random_flip_flips_about_half():
    x = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).repeat(1000, 1, 1, 1)
    out = data.random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 3).sum().item()
    assert 400 < flipped < 600
    assert all(torch.equal(o, x[0]) or torch.equal(o, x[0].flip(2)) for o in out)
