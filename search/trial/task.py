"""The task contract: what a trial trains on, how it scores, and what the project owns.

A task is the user's class named in the config (`train.task: package.module:Class`), built
in every trial process as `Class(device=torch.device, **train.task_kwargs)`. It holds the
data and says how to learn from it; the project owns the loop around it: the model (from
`model.name`, built with the task's `model_args()`), the project's Adam with the sampled
values, the schedule, gradient clipping, checkpoints, reports and divergence detection.

    model_args() -> dict          keyword arguments for the model factory besides
                                  `model.kwargs` (e.g. {"in_features": 10, "out_features": 1})
    batches(batch_size, epoch, generator) -> iterable of tuples of tensors
                                  one epoch of training batches, on the device, the sample
                                  dimension first; any randomness drawn from `generator`
                                  (seeded by `train.seed`, saved in every checkpoint, so a
                                  resumed trial draws the same batches)
    loss(model, batch) -> Tensor  a scalar with a gradient
    evaluate(model) -> dict       validation metrics: names starting with `val_`, finite
                                  numbers (the model is in eval mode, gradients off)
    example_input() -> Tensor     a small input batch: the registered model's signature and
                                  the ONNX export's input

Optional: `steps_per_epoch(batch_size) -> int` (otherwise epoch 1's batches are counted once,
for the schedule), `tie_break = ("val_other", "min" or "max")` (how trials equal on
`search.metric` are ordered; otherwise by start order), `diverged() -> dict` (the
validation metrics reported for a run whose loss went non-finite; otherwise none, and the
search metric is reported as NaN, ranked last).

Several workers per trial: the trainer hands each rank its contiguous part of every
training batch (all ranks draw the same batches from the same seed), and `evaluate` runs on
every rank over all of the validation data, so no part of a task needs to know its rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from search.config import ConfigError, TrialConfig, import_attribute

REQUIRED = ("model_args", "batches", "loss", "evaluate", "example_input")
Batch = tuple[Tensor, ...]


class Task(Protocol):
    def model_args(self) -> dict[str, Any]: ...
    def batches(self, batch_size: int, epoch: int,
                generator: torch.Generator) -> Iterable[Batch]: ...
    def loss(self, model: nn.Module, batch: Batch) -> Tensor: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
    def example_input(self) -> Tensor: ...


def task_class(name: str) -> type:
    """The class `train.task` names; ConfigError naming what is wrong or missing."""
    cls = import_attribute(name, "train.task")
    missing = [m for m in REQUIRED if not callable(getattr(cls, m, None))]
    if missing:
        raise ConfigError(f"train.task {name!r}: has no method {', '.join(missing)} (a task "
                          f"has {', '.join(REQUIRED)})")
    return cls


def build(cfg: TrialConfig, device: torch.device) -> Task:
    """The config's task on `device`: the user's, or the built-in image classification."""
    if cfg.train.task is None:
        from search.trial.image_task import ImageClassification

        return ImageClassification(cfg, device)
    cls = task_class(cfg.train.task)
    try:
        return cls(device=device, **cfg.train.task_kwargs)
    except Exception as e:  # noqa: BLE001  the user's constructor: its failure is theirs to see
        raise ConfigError(f"train.task {cfg.train.task!r}: building it raised "
                          f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None


def batch_len(batch: Batch) -> int:
    """Samples in a batch: its first tensor's first dimension."""
    return len(batch[0])


def rows(batch: Batch, part: slice) -> Batch:
    """Every tensor of a batch cut to the samples in `part` (a rank's share)."""
    return tuple(t[part] for t in batch)


def check_metrics(name: str, metrics: Any) -> dict[str, float]:
    """`evaluate`'s answer as {val_...: finite float}; ConfigError saying what is wrong."""
    where = f"train.task {name!r}: evaluate"
    if not isinstance(metrics, dict) or not metrics:
        raise ConfigError(f"{where} returned {type(metrics).__name__} {metrics!r:.60}; "
                          "expected a dict of validation metrics, e.g. {'val_rmse': 1.5}")
    out = {}
    for key, value in metrics.items():
        if not (isinstance(key, str) and key.startswith("val_")):
            raise ConfigError(f"{where} returned the key {key!r}; metric names start with "
                              "'val_'")
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} returned {key}={value!r:.60}, not a number")
        if not math.isfinite(value):
            raise ConfigError(f"{where} returned {key}={value}, not a finite number")
        out[key] = float(value)
    return out


def check_loss(name: str, loss: Any) -> None:
    """ConfigError unless `loss` is a finite scalar tensor with a gradient."""
    where = f"train.task {name!r}: loss"
    if not isinstance(loss, Tensor):
        raise ConfigError(f"{where} returned {type(loss).__name__}, not a scalar tensor")
    if loss.numel() != 1 or loss.dim() > 1:
        raise ConfigError(f"{where} returned a tensor of shape {tuple(loss.shape)}, not a "
                          "scalar (reduce it, e.g. with .mean())")
    if not loss.requires_grad:
        raise ConfigError(f"{where} has no gradient: it does not depend on the model's "
                          "parameters (computed under no_grad, or detached?)")
