"""What the driver checks, and prepares, before Ray starts.

Every trial would otherwise meet the same problem, after Ray, MLflow and the trial
processes had started: the data is there (torchvision's files; an image folder or a data
function loads, and an image folder is decoded into its cache once, here), the model
builds for that data and turns a few of its images into one finite logit per class, and
`search.metric` is a number the trials report. A training task of the user's
(`train.task`) is built and run once instead: a batch's loss, an evaluation, its example.
"""

from __future__ import annotations

import difflib
import warnings

import torch
from torch import Tensor, nn

import models
from search.config import ConfigError, DataConfig, SearchConfig, TrialConfig
from search.trial import data, trainer
from search.trial import task as task_
from search.trial.trainer import METRICS

# (classes, channels, side) of the built-in datasets, known without loading them.
SHAPES = {"digits": (10, 1, 8), "mnist": (10, 1, 28), "fashion_mnist": (10, 1, 28),
          "cifar10": (10, 3, 32), "cifar100": (100, 3, 32)}
# Images each built model is run on. Measured on 2 busy cores: cnn on digits 0.08 s,
# resnet18 on CIFAR's 32x32 0.4 to 0.9 s (a single image costs about half of that).
SAMPLES = 4


def check(cfg: TrialConfig) -> None:
    """Raise ConfigError, naming the field and value, for what no trial could get past."""
    if cfg.train.task is not None:
        check_task(cfg)
        return
    if isinstance(cfg, SearchConfig):
        check_metric(cfg.search.metric, METRICS, "trials")
    data.check_present(cfg.data)
    batch, num_classes = sample(cfg.data)
    for field, kwargs in model_kwargs(cfg):
        # A factory's warnings (a zero-sized layer, a deprecated argument) are the trials'
        # to show: here they would break the one line a refusal is.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = models.build(cfg.model.name, num_classes, batch.shape[1],
                                     batch.shape[-1], **kwargs)
            except models.ModelError as e:
                raise ConfigError(f"{field}: {e}") from None
            problem = fit_problem(model, batch, num_classes)
        if problem:
            raise ConfigError(f"{field}: model {cfg.model.name!r}: {problem}")


def check_metric(metric: str, reported: tuple[str, ...] = METRICS, who: str = "trials") -> None:
    """Refuse a `search.metric` the trials do not report as a number every epoch: Ray would
    stop the search at the first result without it. `who` reports `reported`."""
    if metric not in reported:
        near = difflib.get_close_matches(metric, reported, n=1)
        raise ConfigError(f"search.metric {metric!r}: no trial reports it; {who} report "
                          f"{', '.join(reported)}" + (f"; nearest: {near[0]}" if near else ""))


def check_task(cfg: TrialConfig) -> None:
    """A `train.task` of the user's, tried once on the CPU as a trial would use it: built,
    its model built from its `model_args()` (with each searched `model.kwargs` value), one
    training batch's loss (a scalar with a gradient), one evaluation (a dict of finite
    val_* numbers), the model run on `example_input()`; then `search.metric` and the
    task's `tie_break` checked against what the evaluation reported."""
    name = cfg.train.task
    device = torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = task_.build(cfg, device)
        evaluated: tuple[str, ...] = ()
        for field, kwargs in model_kwargs(cfg):
            torch.manual_seed(cfg.train.seed)
            try:
                model = models.make(cfg.model.name, **task.model_args(), **kwargs)
            except models.ModelError as e:
                raise ConfigError(f"{field}: {e}") from None
            evaluated = tuple(_try_task(cfg, task, model))
    reported = trainer.reported(evaluated, getattr(task, "unit", "samples"))
    if isinstance(cfg, SearchConfig):
        check_metric(cfg.search.metric, reported, f"train.task {name!r} and the trainer")
    tie = getattr(type(task), "tie_break", None)
    if tie is not None and (not isinstance(tie, tuple | list) or len(tie) != 2
                            or tie[0] not in evaluated or tie[1] not in ("min", "max")):
        raise ConfigError(f"train.task {name!r}: tie_break {tie!r}: expected (metric, 'min' "
                          f"or 'max') with a metric evaluate reports ({', '.join(evaluated)})")


def _try_task(cfg: TrialConfig, task: task_.Task, model: nn.Module) -> dict[str, float]:
    """One training step's loss and one evaluation of `task` on `model`: the evaluation's
    metrics, or ConfigError naming the method that failed and how."""
    name = cfg.train.task

    def call(method: str, *args):
        try:
            if method == "batches":  # a generator raises when iterated
                return next(iter(task.batches(*args)), None)
            return getattr(task, method)(*args)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001  the user's code: any failure is theirs to see
            raise ConfigError(f"train.task {name!r}: {method} raised {type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0]}") from None

    generator = torch.Generator().manual_seed(cfg.train.seed)
    batch = call("batches", cfg.train.batch_size, 1, generator)
    if not isinstance(batch, tuple | list) or not batch or not all(
            isinstance(t, Tensor) for t in batch):
        raise ConfigError(f"train.task {name!r}: batches yielded {type(batch).__name__}, "
                          "not a tuple of tensors (an empty epoch?)")
    model.train()
    loss = call("loss", model, tuple(batch))
    task_.check_loss(name, loss)
    loss.backward()
    if not any(p.grad is not None for p in model.parameters()):
        raise ConfigError(f"train.task {name!r}: loss has no gradient for any of the "
                          "model's parameters")
    model.eval()
    with torch.no_grad():
        metrics = task_.check_metrics(name, call("evaluate", model))
        example = call("example_input")
        if not isinstance(example, Tensor):
            raise ConfigError(f"train.task {name!r}: example_input returned "
                              f"{type(example).__name__}, not a tensor")
        try:
            model(example)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"train.task {name!r}: the model does not run on "
                              f"example_input() {tuple(example.shape)}: {type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0]}") from None
    return metrics


def builtin_shape(cfg: DataConfig) -> tuple[int, tuple[int, int, int]] | None:
    """(classes, (channels, height, width)) of a built-in dataset; None for the user's."""
    if cfg.dataset in SHAPES:
        classes, channels, side = SHAPES[cfg.dataset]
        return classes, (channels, side, side)
    if cfg.dataset == "synthetic":
        return cfg.synthetic_classes, cfg.synthetic_shape
    return None


def sample(cfg: DataConfig) -> tuple[Tensor, int]:
    """A few images as a trial feeds them to its model (float, normalised), and the
    number of classes. The user's data is loaded here (an image folder is decoded and
    cached): the first images of its validation split. A built-in dataset's files are
    loaded by the trials only: random pixels of its shape stand in for its images."""
    known = builtin_shape(cfg)
    if known is None:
        ds = data.load(cfg)
        split, mean, std = ds.val.rows(slice(0, SAMPLES)), ds.mean, ds.std
        classes = ds.num_classes
    else:
        classes, shape = known
        pixels = torch.randint(0, 256, (SAMPLES, *shape), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
        split = data.Split(pixels, torch.zeros(SAMPLES, dtype=torch.int64))
        mean, std = (0.5,) * shape[0], (0.29,) * shape[0]  # those of uniform pixels
    batch, _ = next(iter(data.DeviceLoader(split, SAMPLES, mean, std, train=False)))
    return batch, classes


def fit_problem(model: nn.Module, batch: Tensor, num_classes: int) -> str | None:
    """What keeps `model` from training on `batch`'s data, or None: a forward that raises,
    an output that is not one finite logit per class and image, nothing to train."""
    shape = tuple(batch.shape)
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch)
    except Exception as e:  # noqa: BLE001  the user's forward: any failure is theirs to see
        return (f"the forward on a batch {shape} raised {type(e).__name__}: "
                f"{(str(e).splitlines() or [''])[0]}")
    expected = (len(batch), num_classes)
    if not isinstance(out, Tensor):
        return f"the forward returned {type(out).__name__}, not a tensor of logits {expected}"
    if tuple(out.shape) != expected:
        return (f"output shape {tuple(out.shape)} for a batch {shape}; expected {expected}, "
                f"a logit for each of the dataset's {num_classes} classes")
    if not out.is_floating_point():
        return f"output of {out.dtype}; logits are floating point"
    if not torch.isfinite(out).all():
        return f"NaN or infinite logits on a batch {shape}, before any training"
    if not any(p.requires_grad for p in model.parameters()):
        return "no parameters to train"
    return None


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
