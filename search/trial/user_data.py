"""The user's own data: an image folder, or a function that returns the images.

`data.dataset: imagefolder` reads a torchvision ImageFolder tree under `data.root` (one
sub-folder per class), decodes every image once, greyscale or RGB (`data.channels`, else
as the first image is), resized to `data.image_size` when set, and keeps the result as one
uint8 tensor in a cache file next to the data (`.adamsearch-<digest>.pt`). The digest
covers every file's path, size and modification time and the decoding settings, so a
changed folder is decoded again; trials, and later searches, load the cache.

`data.dataset: package.module:function` calls `function(**data.kwargs)`, which returns
`(images, labels)`: uint8 images (N, C, H, W) and int64 labels (N,), or a torch Dataset
whose items are `(image, label)` with the image a uint8 (C, H, W) tensor or a PIL image.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from search.config import ConfigError, DataConfig, import_attribute

CACHE_PREFIX = ".adamsearch-"


# ---------------------------------------------------------------- image folders


def _image_files(cfg: DataConfig) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(path, class index)]) as torchvision's ImageFolder finds them."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(cfg.root)
    if not root.is_dir():
        raise ConfigError(f"data.root {root.resolve()}: no such folder (data.dataset "
                          "imagefolder reads one sub-folder per class)")
    try:
        classes, index = find_classes(str(root))
        samples = make_dataset(str(root), index, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise ConfigError(f"data.root {root.resolve()}: {str(e).splitlines()[0]}") from None
    if not samples:
        raise ConfigError(f"data.root {root.resolve()}: no images in its class folders "
                          f"({', '.join(classes[:5])})")
    used = sorted({c for _, c in samples})
    if len(used) < 2:
        raise ConfigError(f"data.root {root.resolve()}: images of one class only "
                          f"({classes[used[0]]!r}); a classifier needs two or more")
    return classes, samples


def _digest(cfg: DataConfig, samples: list[tuple[str, int]]) -> str:
    h = hashlib.sha256(f"{cfg.image_size}|{cfg.channels}".encode())
    for path, label in samples:
        stat = os.stat(path)
        h.update(f"{os.path.relpath(path, cfg.root)}|{label}|{stat.st_size}|"
                 f"{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _decode_one(path: str, channels: int | None, size: int | None) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3): `channels` 1 or 3, else as the image is."""
    from PIL import Image

    with Image.open(path) as img:
        if channels is None:
            channels = 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3
        img = img.convert("L" if channels == 1 else "RGB")
        if size is not None:
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _undecodable(cfg: DataConfig, bad: list[tuple[str, Exception]]) -> ConfigError:
    """The refusal of a folder whose files in `bad` do not decode, naming the first."""
    (path, e), more = bad[0], len(bad) - 1
    reason = str(e).replace(f" {path!r}", "").splitlines()[0]  # PIL names the file again
    return ConfigError(
        f"data.root {Path(cfg.root).resolve()}: {os.path.relpath(path, cfg.root)} does not "
        f"decode ({type(e).__name__}: {reason})"
        + (f", and {more} more file{'s do' if more > 1 else ' does'} not" if more else "")
        + f"; remove or replace {'them' if more else 'it'}")


def _decode(cfg: DataConfig, samples: list[tuple[str, int]]) -> tuple[Tensor, Tensor]:
    images, sizes, bad = [], {}, []
    channels = cfg.channels
    for path, _ in samples:
        try:
            array = _decode_one(path, channels, cfg.image_size)
        except Exception as e:  # noqa: BLE001  PIL raises OSError, SyntaxError, ValueError...
            bad.append((path, e))
            continue
        channels = channels or (1 if array.ndim == 2 else 3)  # as the first image is
        sizes.setdefault(array.shape[:2], os.path.relpath(path, cfg.root))
        if len(sizes) > 1:
            (a, first), (b, other) = list(sizes.items())[:2]
            raise ConfigError(
                f"data.root {Path(cfg.root).resolve()}: images of different sizes "
                f"({a[1]}x{a[0]} {first}, {b[1]}x{b[0]} {other}); set data.image_size to "
                "resize them to one")
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    if bad:
        raise _undecodable(cfg, bad)
    x = torch.from_numpy(np.stack(images))
    if x.shape[-1] != x.shape[-2]:
        raise ConfigError(f"data.root {Path(cfg.root).resolve()}: images are "
                          f"{x.shape[-1]}x{x.shape[-2]}, not square; set data.image_size "
                          "to resize them")
    y = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return x, y


def image_folder(cfg: DataConfig, check: Callable[[int], object] | None = None
                 ) -> tuple[Tensor, Tensor, int]:
    """Images, labels and the number of classes of an ImageFolder tree, cached.
    `check(number of images)` raises for a folder refused by its size, before the cache
    is written."""
    classes, samples = _image_files(cfg)
    if check is not None:
        check(len(samples))
    cache = Path(cfg.root, f"{CACHE_PREFIX}{_digest(cfg, samples)}.pt")
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        return saved["x"], saved["y"], len(classes)
    x, y = _decode(cfg, samples)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"x": x, "y": y}, tmp)
    os.replace(tmp, cache)  # atomic: trial processes may decode at the same time
    for old in Path(cfg.root).glob(f"{CACHE_PREFIX}*.pt"):  # a changed folder's old cache
        if old != cache:
            old.unlink(missing_ok=True)
    return x, y, len(classes)


# ---------------------------------------------------------------- a function


def from_function(cfg: DataConfig) -> tuple[Tensor, Tensor, int]:
    """Images, labels and the number of classes from `package.module:function`."""
    name = cfg.dataset
    function = import_attribute(name, "data.dataset")
    try:
        out = function(**cfg.kwargs)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"data.dataset {name!r}: the function raised {type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0]}") from None
    x, y = _as_tensors(name, out)
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ConfigError(f"data.dataset {name!r}: images must be uint8 (N, C, H, W), got "
                          f"{x.dtype} {tuple(x.shape)}")
    if len(x) == 0:
        raise ConfigError(f"data.dataset {name!r}: no samples: images {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x) or y.dtype not in (torch.int64, torch.int32):
        raise ConfigError(f"data.dataset {name!r}: labels must be int64 (N,) for N={len(x)} "
                          f"images, got {y.dtype} {tuple(y.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ConfigError(f"data.dataset {name!r}: images must be square, got "
                          f"{x.shape[-1]}x{x.shape[-2]}")
    classes = int(y.max()) + 1 if len(y) else 0
    if int(y.min()) < 0 or len(torch.unique(y)) < 2:
        raise ConfigError(f"data.dataset {name!r}: labels must be 0..K-1 with K >= 2, got "
                          f"{sorted(torch.unique(y).tolist())[:5]}")
    return x.contiguous(), y.long(), classes


def _as_tensors(name: str, out: Any) -> tuple[Tensor, Tensor]:
    if isinstance(out, tuple) and len(out) == 2:
        return torch.as_tensor(out[0]), torch.as_tensor(out[1])
    if isinstance(out, torch.utils.data.Dataset):
        images, labels = [], []
        for image, label in out:  # type: ignore[attr-defined]
            if not isinstance(image, Tensor):  # a PIL image
                array = np.asarray(image, dtype=np.uint8)
                image = torch.from_numpy(array[None] if array.ndim == 2
                                         else array.transpose(2, 0, 1).copy())
            images.append(image)
            labels.append(int(label))
        if not images:
            raise ConfigError(f"data.dataset {name!r}: the Dataset has no samples")
        if len({tuple(i.shape) for i in images}) > 1:
            raise ConfigError(f"data.dataset {name!r}: the Dataset's images differ in shape")
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
    raise ConfigError(f"data.dataset {name!r}: the function returned {type(out).__name__}; "
                      "expected (images, labels) or a torch Dataset")
