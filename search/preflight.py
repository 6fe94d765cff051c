"""What the driver checks, and prepares, before Ray starts.

Every trial would otherwise meet the same problem, after Ray, MLflow and the trial
processes had started: the data is there (torchvision's files; an image folder or a data
function loads, and an image folder is decoded into its cache once, here), the model
builds for that data.
"""

from __future__ import annotations

import models
from search.config import ConfigError, DataConfig, TrialConfig
from search.trial import data

# (classes, channels, side) of the built-in datasets, known without loading them.
SHAPES = {"digits": (10, 1, 8), "mnist": (10, 1, 28), "fashion_mnist": (10, 1, 28),
          "cifar10": (10, 3, 32), "cifar100": (100, 3, 32)}


def data_shape(cfg: DataConfig) -> tuple[int, int, int]:
    """(number of classes, channels, image side) of the configured dataset."""
    if cfg.dataset in SHAPES:
        return SHAPES[cfg.dataset]
    if cfg.dataset == "synthetic":
        return cfg.synthetic_classes, cfg.synthetic_shape[0], cfg.synthetic_shape[-1]
    ds = data.load(cfg)  # an image folder (decoded and cached now) or the user's function
    return ds.num_classes, ds.in_channels, ds.image_size


def check(cfg: TrialConfig) -> None:
    """Raise ConfigError, naming the field and value, for what no trial could get past."""
    data.check_present(cfg.data)
    num_classes, channels, side = data_shape(cfg.data)
    try:
        models.build(cfg.model.name, num_classes, channels, side, **cfg.model.kwargs)
    except models.ModelError as e:
        raise ConfigError(f"model.name: {e}") from None
