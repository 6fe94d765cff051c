"""What the driver checks, and prepares, before Ray starts.

Every trial would otherwise meet the same problem, after Ray, MLflow and the trial
processes had started: the data is there (torchvision's files; an image folder or a data
function loads, and an image folder is decoded into its cache once, here), the model
builds for that data.
"""

from __future__ import annotations

import models
from search.config import ConfigError, DataConfig, SearchConfig, TrialConfig
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
    for field, kwargs in model_kwargs(cfg):
        try:
            models.build(cfg.model.name, num_classes, channels, side, **kwargs)
        except models.ModelError as e:
            raise ConfigError(f"{field}: {e}") from None


def model_kwargs(cfg: TrialConfig) -> list[tuple[str, dict]]:
    """The model's arguments to build it with, each with the field it comes from: as
    configured, and for a search with each value the space can give a searched
    `model.kwargs.NAME` (both bounds, every choice), so that a plug-in factory that does
    not take an argument, or breaks at a bound, is found here rather than in every trial."""
    keys = cfg.space.keys() if isinstance(cfg, SearchConfig) else {}
    out = [("model.name", dict(cfg.model.kwargs))]
    for key, r in keys.items():
        if key.startswith("model.kwargs."):
            name = key.removeprefix("model.kwargs.")
            out += [(f"space.{key} {v!r}", {**cfg.model.kwargs, name: v})
                    for v in r.candidates()]
    return out
