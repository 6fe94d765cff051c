"""Model registry: build a network by name for a dataset's classes, channels and image size.

A name is a registered one (`cnn`, `mlp`, `resnet9`, `resnet18`, and any a package adds
with `@models.register("name")`), or an import path `package.module:factory` naming the
user's own factory. Either is called as

    factory(num_classes=..., in_channels=..., image_size=..., **kwargs)

with the dataset's number of classes, image channels and (square) image side, plus the
config's `model.kwargs`, and must return a `torch.nn.Module` taking a float batch
(N, in_channels, image_size, image_size), normalised, and returning (N, num_classes) logits.
For a training task of the user's (`train.task`), the factory is called with the task's
`model_args()` instead, plus `model.kwargs` (`make`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from models.normalized import Normalized
from models.resnet import resnet9, resnet18
from models.small import cnn, mlp

__all__ = ["ModelError", "Normalized", "build", "is_import_path", "make", "names",
           "register", "resolve"]

Builder = Callable[..., nn.Module]

_REGISTRY: dict[str, Builder] = {
    "cnn": cnn,
    "mlp": mlp,
    "resnet18": resnet18,
    "resnet9": resnet9,
}


class ModelError(ValueError):
    """A model name that names nothing buildable, or a factory that did not build a model."""


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make `factory` buildable as `model.name: <name>`."""

    def add(factory: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ModelError(f"model {name!r} is registered already")
        _REGISTRY[name] = factory
        return factory

    return add


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def is_import_path(name: str) -> bool:
    """Whether `name` has the form `package.module:factory`."""
    module, sep, attr = name.partition(":")
    return bool(sep) and all(part.isidentifier() for part in (*module.split("."), attr))


def resolve(name: str) -> Builder:
    """The factory a model name stands for; ModelError naming what is wrong."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if not is_import_path(name):
        raise ModelError(f"unknown model {name!r}; known: {', '.join(names())}, or an import "
                         "path package.module:factory")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001  any failure to import is the user's to see
        raise ModelError(f"model {name!r}: cannot import {module_name}: "
                         f"{type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"model {name!r}: {module_name} has no callable {attr!r}")
    return factory


def build(name: str, num_classes: int, in_channels: int, image_size: int = 32,
          **kwargs: Any) -> nn.Module:
    """Build model `name` for `num_classes` outputs on `in_channels` x `image_size`^2 inputs.

    Raises ModelError naming the model, so a typo or a broken factory fails loudly.
    """
    return make(name, num_classes=num_classes, in_channels=in_channels,
                image_size=image_size, **kwargs)


def make(name: str, **kwargs: Any) -> nn.Module:
    """Build model `name` from keyword arguments alone: an image classifier's (`build`),
    or whatever a training task's `model_args()` gives (search/trial/task.py)."""
    factory = resolve(name)
    try:
        model = factory(**kwargs)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"model {name!r}: the factory raised {type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r}: the factory returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    return model
