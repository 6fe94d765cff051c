"""Train one configuration, reporting metrics and a checkpoint once per epoch.

`train(cfg, report)` is the whole trial: `python -m search.train` calls it with a
report hook that prints and saves, the Ray trainable with one that calls
`tune.report`. A checkpoint holds model, optimizer, scheduler, epoch and RNG state,
so a run resumed from epoch k repeats epochs k+1..n exactly (bitwise on CPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

import models
import optim
from search.config import TrialConfig
from search.trial import data

if TYPE_CHECKING:
    from search.trial.distributed.ranks import Ranks

Metrics = dict[str, Any]
Checkpoint = dict[str, Any]  # plain tensors and numbers: loads with weights_only=True
Report = Callable[[Metrics, "Checkpoint | None"], None]


class EpochMetrics(NamedTuple):
    """The numbers every epoch's report holds (with a `diverged` flag): the trainer reports
    them through this record, so `METRICS`, what `search.metric` may name, is what it
    reports."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    lr: float
    epoch_s: float
    images_per_s: float  # in training


METRICS = EpochMetrics._fields


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def optimizer_args(cfg: TrialConfig) -> tuple[type[optim.Adam], dict[str, Any]]:
    """The project's Adam (or AdamW, decoupled weight decay) and its arguments."""
    o = cfg.optimizer
    cls = optim.AdamW if o.name == "adamw" else optim.Adam
    return cls, dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                     weight_decay=o.weight_decay, amsgrad=o.amsgrad, foreach=o.foreach,
                     fused=o.fused, state_dtype=o.state_dtype)


def build_optimizer(cfg: TrialConfig, params) -> optim.Adam:
    """The optimizer section's optimizer over `params`."""
    cls, kwargs = optimizer_args(cfg)
    return cls(params, **kwargs)


def build_schedule(cfg: TrialConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step learning-rate schedule. Momentum is never cycled: beta1 is searched."""
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.train.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.optimizer.lr,
            total_steps=total,
            pct_start=cfg.train.warmup_fraction,
            cycle_momentum=False,
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def model_spec(cfg: TrialConfig, ds: data.Dataset) -> dict[str, Any]:
    """What `models.build` needs to rebuild the network from a checkpoint."""
    return {
        "name": cfg.model.name,  # a registered name, or the user's package.module:factory
        "kwargs": dict(cfg.model.kwargs),
        "num_classes": ds.num_classes,
        "in_channels": ds.in_channels,
        "image_size": ds.image_size,
        "mean": list(ds.mean),
        "std": list(ds.std),
    }


def deployable(checkpoint: Checkpoint) -> nn.Module:
    """A checkpoint's trained network, packaged for deployment: rebuilt from its
    `model_spec` (a registered name or the user's factory, with its kwargs), its weights
    loaded, wrapped in `models.Normalized` so that it takes images scaled to [0, 1]."""
    spec = checkpoint["model_spec"]
    net = models.build(spec["name"], spec["num_classes"], spec["in_channels"],
                       spec["image_size"], **spec.get("kwargs", {}))
    net.load_state_dict(checkpoint["model"])
    return models.Normalized(net, spec["mean"], spec["std"]).eval()


@torch.no_grad()
def evaluate(model: nn.Module, loader: data.DeviceLoader, autocast,
             parallel: Ranks | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a loader (over every rank's loader, summed)."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for xb, yb in loader:
        with autocast():
            logits = model(xb)
        loss_sum += nn.functional.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
        count += len(yb)
    if parallel is not None:
        loss_sum, correct, count = parallel.sum(loss_sum, correct, count)
    return loss_sum / count, correct / count


def train(cfg: TrialConfig, report: Report, resume: Checkpoint | None = None,
          dataset: data.Dataset | None = None, parallel: Ranks | None = None) -> Metrics:
    """Train `cfg` for `cfg.train.epochs`, calling `report(metrics, checkpoint)` each epoch.

    `dataset` is `cfg.data` already loaded (a warm trial process keeps it); None loads it.
    A non-finite training loss ends the run: the epoch is reported with
    `diverged: True` and `val_acc` 0, and no checkpoint. Returns the last metrics.
    `parallel`: this process is one rank of a data-parallel trial (search/trial/distributed/):
    it trains on its part of every batch, the metrics are the whole group's, and a
    checkpoint is made only on the epochs rank 0 picks (None is reported on the others).
    """
    device = parallel.device if parallel is not None else pick_device(cfg.train.device)
    cuda = device.type == "cuda"
    torch.manual_seed(cfg.train.seed)
    ds = (dataset or data.load(cfg.data)).to(device)
    train_split, val_split = ds.train, ds.val
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
    loader = data.DeviceLoader(
        train_split,
        cfg.train.batch_size,
        ds.mean,
        ds.std,
        train=True,
        generator=generator,
        crop_padding=cfg.data.crop_padding,
        flip=cfg.data.flip,
        channels_last=cuda,
        part=parallel.part if parallel is not None else None,
    )
    if parallel is not None:
        val_split = val_split.rows(parallel.part(len(val_split)))
    val_loader = data.DeviceLoader(
        val_split, 1024, ds.mean, ds.std, train=False, channels_last=cuda
    )

    model = models.build(cfg.model.name, ds.num_classes, ds.in_channels, ds.image_size,
                         **cfg.model.kwargs)
    model = model.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    opt = (build_optimizer(cfg, model.parameters()) if parallel is None else
           parallel.optimizer(model.parameters(), *optimizer_args(cfg)))
    schedule = build_schedule(cfg, opt, len(loader))
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"]["cpu"])
        generator.set_state(resume["rng"]["data"])
        if cuda and "cuda" in resume["rng"]:
            torch.cuda.set_rng_state(resume["rng"]["cuda"])
        start_epoch = resume["epoch"]
    step_model = parallel.wrap(model) if parallel is not None else model
    step_model = torch.compile(step_model) if cfg.train.compile else step_model
    # Ranks evaluate their parts with the bare model: DDP's forward is a collective.
    eval_model = step_model if parallel is None else model

    def autocast():
        # bf16 autocast on CUDA; on CPU full fp32 keeps resumed runs bitwise equal.
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    metrics: Metrics = {}
    for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
        model.train()
        if parallel is not None:
            parallel.dropout_seed(cfg.train.seed, epoch)
        lr = schedule.get_last_lr()[0]
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for xb, yb in loader:
            with autocast():
                loss = loss_fn(step_model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            schedule.step()
            loss_sum += loss.detach() * len(yb)  # stays on device: no sync per step
            seen += len(yb)
        if parallel is not None:  # the whole group's mean loss and images
            loss_sum, seen = parallel.sum(loss_sum, seen)
        train_loss = float(loss_sum / seen)
        if cuda:
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        diverged = not math.isfinite(train_loss)
        val_loss, val_acc = ((float("inf"), 0.0) if diverged else
                             evaluate(eval_model, val_loader, autocast, parallel))
        metrics = {**EpochMetrics(epoch, train_loss, val_loss, val_acc, lr,
                                  time.perf_counter() - t0, seen / train_s)._asdict(),
                   "diverged": diverged}
        if diverged:
            report(metrics, None)
            return metrics
        if parallel is not None:  # what ZeRO saves: each rank's share of the Adam state
            metrics["state_bytes_per_rank"] = parallel.state_bytes(opt)
        if parallel is not None and not parallel.checkpoint_due(epoch):
            report(metrics, None)
            continue
        rng = {"cpu": torch.get_rng_state(), "data": generator.get_state()}
        if cuda:
            rng["cuda"] = torch.cuda.get_rng_state()
        checkpoint = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": (opt.state_dict() if parallel is None else
                          parallel.optimizer_state(opt)),
            "scheduler": schedule.state_dict(),
            "rng": rng,
            "model_spec": model_spec(cfg, ds),
            "metrics": dict(metrics),
        }
        report(metrics, checkpoint)
    return metrics
