"""Datasets as tensors on the training device, and a loader that batches them there.

Every image dataset becomes one uint8 tensor (N, C, H, W) plus int64 labels, moved to
the device once. Shuffling, random crop, flip and normalisation are batched tensor
operations on that device (the airbench recipe): no per-sample Python, no worker
processes, no host-to-device copy per batch.
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from search.config import ConfigError, DataConfig
from search.trial import user_data

# What torchvision expects under `data.root`, for the "not present" message.
EXPECTED_FILES = {
    "cifar10": "cifar-10-batches-py/data_batch_1..5 (from cifar-10-python.tar.gz)",
    "cifar100": "cifar-100-python/train (from cifar-100-python.tar.gz)",
    "mnist": "MNIST/raw/train-images-idx3-ubyte and train-labels-idx1-ubyte",
    "fashion_mnist": "FashionMNIST/raw/train-images-idx3-ubyte and train-labels-idx1-ubyte",
}


# The torchvision dataset classes by config name (looked up lazily: torchvision is slow to
# import and most searches never need it).
TORCHVISION = {
    "cifar10": lambda d: d.CIFAR10,
    "cifar100": lambda d: d.CIFAR100,
    "mnist": lambda d: d.MNIST,
    "fashion_mnist": lambda d: d.FashionMNIST,
}


class DatasetMissing(ConfigError):
    """The dataset is not on disk and could not be downloaded."""


@dataclass(frozen=True)
class Split:
    x: Tensor  # uint8 (N, C, H, W)
    y: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def rows(self, part: slice) -> Split:
        """The samples in `part` (a rank's share of a split)."""
        return Split(self.x[part], self.y[part])


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the training split, in [0, 1] units
    std: tuple[float, ...]

    def to(self, device: torch.device) -> Dataset:
        """Both splits on `device` (the same object where they already are)."""
        if self.train.x.device == torch.device(device):
            return self
        return Dataset(self.train.to(device), self.val.to(device), self.num_classes,
                       self.mean, self.std)

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.x.shape[-1]


def digits_file() -> Path | None:
    """scikit-learn's bundled digits CSV, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    return path if path.is_file() else None


def _digits() -> tuple[Tensor, Tensor, int]:
    # The same file and parsing as sklearn.datasets.load_digits, read directly: importing
    # sklearn.datasets takes a second, which every fresh trial process would pay.
    path = digits_file()
    if path is None:  # a future scikit-learn that moved it
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, target = bunch.images, bunch.target
    else:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            table = np.loadtxt(f, delimiter=",")
        images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    # Pixel values are 0..16; scale to 0..255 so every dataset is uint8 alike.
    x = torch.from_numpy(images).mul(255 / 16).round().clamp(0, 255).to(torch.uint8)
    return x.unsqueeze(1), torch.from_numpy(target).long(), 10


def _synthetic(cfg: DataConfig) -> tuple[Tensor, Tensor, int]:
    g = torch.Generator().manual_seed(cfg.split_seed)
    x = torch.randint(0, 256, (cfg.synthetic_samples, *cfg.synthetic_shape), generator=g)
    y = torch.randint(0, cfg.synthetic_classes, (cfg.synthetic_samples,), generator=g)
    return x.to(torch.uint8), y, cfg.synthetic_classes


def _torchvision(cfg: DataConfig) -> tuple[Tensor, Tensor, int]:
    from torchvision import datasets

    cls = TORCHVISION[cfg.dataset](datasets)
    try:
        ds = cls(cfg.root, train=True, download=cfg.download)
    except (RuntimeError, OSError) as e:  # not found, or the download failed
        how = (
            "the download failed (no network?)"
            if cfg.download
            else "set data.download: true to fetch it"
        )
        raise DatasetMissing(
            f"data.dataset {cfg.dataset!r} not found under {Path(cfg.root).resolve()}: "
            f"expected {EXPECTED_FILES[cfg.dataset]}; {how}, or place those files there "
            f"({type(e).__name__})"
        ) from None
    x = torch.as_tensor(ds.data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # to (N, C, H, W)
    return x.contiguous(), torch.as_tensor(ds.targets).long(), len(ds.classes)


def required_files(cfg: DataConfig) -> list[Path]:
    """The files torchvision checks for under `data.root` before it loads a dataset."""
    from torchvision import datasets

    cls = TORCHVISION[cfg.dataset](datasets)
    root = Path(cfg.root)
    if hasattr(cls, "resources"):  # MNIST and FashionMNIST: the extracted downloads
        return [root / cls.__name__ / "raw" / Path(url).stem for url, _ in cls.resources]
    return [root / cls.base_folder / name for name, _ in cls.train_list + cls.test_list]


def check_present(cfg: DataConfig) -> None:
    """Raise DatasetMissing, naming the files and the folder, unless the dataset is there
    (or will be downloaded). A search checks this before Ray starts: every trial would
    otherwise fail the same way."""
    if cfg.dataset not in TORCHVISION or cfg.download:
        return
    missing = [f for f in required_files(cfg) if not f.is_file()]
    if missing:
        root = Path(cfg.root).resolve()
        names = ", ".join(str(f.relative_to(cfg.root)) for f in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DatasetMissing(
            f"data.dataset {cfg.dataset!r} not found under {root}: missing {names}{more} "
            f"(expected {EXPECTED_FILES[cfg.dataset]}); set data.download: true to fetch "
            "it, or place those files there")


def split_sizes(n: int, cfg: DataConfig) -> tuple[int, int]:
    """(training, validation) samples of a dataset of `n` split by `data.val_fraction`;
    ConfigError unless both have some."""
    n_val = max(1, round(n * cfg.val_fraction))
    if n_val >= n:
        raise ConfigError(f"data.val_fraction {cfg.val_fraction}: takes {n_val} of the {n} "
                          f"samples of data.dataset {cfg.dataset!r} for validation, leaving "
                          "none to train on; lower it or add samples")
    return n - n_val, n_val


def load(cfg: DataConfig) -> Dataset:
    """Load the training set and carve a validation split from it, by `split_seed`.

    The test set is never loaded: nothing here may be selected on it.
    """
    if cfg.dataset == "digits":
        x, y, num_classes = _digits()
    elif cfg.dataset == "synthetic":
        x, y, num_classes = _synthetic(cfg)
    elif cfg.dataset == "imagefolder":  # checked before its cache is written
        x, y, num_classes = user_data.image_folder(cfg, check=lambda n: split_sizes(n, cfg))
    elif cfg.dataset in TORCHVISION:
        x, y, num_classes = _torchvision(cfg)
    else:  # package.module:function
        x, y, num_classes = user_data.from_function(cfg)
    _, n_val = split_sizes(len(y), cfg)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.split_seed))
    val, train = perm[:n_val], perm[n_val:]
    train_x = x[train].float().div(255)
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return Dataset(
        train=Split(x[train], y[train]),
        val=Split(x[val], y[val]),
        num_classes=num_classes,
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
    )


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Crop each image of a batch at a random offset after zero-padding it."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip each image of a batch left-right with probability 1/2."""
    flip = torch.rand(len(x), device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class DeviceLoader:
    """Batches of a Split that lives on the device: shuffled, augmented, normalised there."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        train: bool,
        generator: torch.Generator | None = None,
        crop_padding: int = 0,
        flip: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.train = train
        self.generator = generator
        self.crop_padding = crop_padding if train else 0
        self.flip = flip and train
        self.channels_last = channels_last
        device = split.x.device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        # Training drops the last partial batch so every step sees a full batch.
        n = len(self.split)
        return max(1, n // self.batch_size) if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.split.x, self.split.y
        if self.train:
            order = torch.randperm(len(y), device=y.device, generator=self.generator)
        else:
            order = torch.arange(len(y), device=y.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            xb = x[idx]
            if self.crop_padding:
                xb = random_crop(xb, self.crop_padding, self.generator)
            if self.flip:
                xb = random_flip(xb, self.generator)
            yb = y[idx]
            xb = (xb.float().div_(255) - self.mean) / self.std
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, yb
