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
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import models
import optim
from search.config import TrialConfig
from search.trial import data, image_task, phases
from search.trial import task as task_
from search.trial.retune import hyperparameters, retune

if TYPE_CHECKING:
    from search.trial.distributed.ranks import Ranks

Metrics = dict[str, Any]
Checkpoint = dict[str, Any]  # plain tensors and numbers: loads with weights_only=True
Report = Callable[[Metrics, "Checkpoint | None"], None]


# What the trainer itself reports every epoch, around the task's validation metrics (and a
# `diverged` flag): epoch, train_loss, val_..., lr, epoch_s, UNIT_per_s.
OWN_METRICS = ("epoch", "train_loss", "lr", "epoch_s")


def reported(val_metrics: tuple[str, ...], unit: str) -> tuple[str, ...]:
    """Every metric a trial reports, for a task whose `evaluate` reports `val_metrics` and
    whose training throughput is counted in `unit` (images, samples)."""
    return ("epoch", "train_loss", *val_metrics, "lr", "epoch_s", f"{unit}_per_s")


METRICS = reported(image_task.METRICS, "images")  # an image classification trial's


def adam_values(opt: torch.optim.Optimizer) -> Metrics:
    """beta1, beta2, eps and weight decay as the epoch trained with them (PBT changes them
    along the way; search/trial/retune.py)."""
    return {k: v for k, v in hyperparameters(opt).items() if k != "lr"}


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


def model_spec(cfg: TrialConfig, task: task_.Task) -> dict[str, Any]:
    """What `deployable` needs to rebuild the network from a checkpoint."""
    spec = {"name": cfg.model.name,  # a registered name, or the user's package.module:factory
            "kwargs": dict(cfg.model.kwargs)}
    if isinstance(task, image_task.ImageClassification):
        ds = task.ds
        return {**spec, "num_classes": ds.num_classes, "in_channels": ds.in_channels,
                "image_size": ds.image_size, "mean": list(ds.mean), "std": list(ds.std)}
    return {**spec, "task": cfg.train.task, "args": dict(task.model_args()),
            "example": task.example_input().detach().cpu()}


def deployable(checkpoint: Checkpoint) -> nn.Module:
    """A checkpoint's trained network, packaged for deployment: rebuilt from its
    `model_spec` (a registered name or the user's factory, with its kwargs), its weights
    loaded, in eval mode. An image classifier is wrapped in `models.Normalized`, so that it
    takes images scaled to [0, 1]; a task's network takes what the task feeds it."""
    spec = checkpoint["model_spec"]
    if "task" in spec:
        net = models.make(spec["name"], **spec["args"], **spec.get("kwargs", {}))
        net.load_state_dict(checkpoint["model"])
        return net.eval()
    net = models.build(spec["name"], spec["num_classes"], spec["in_channels"],
                       spec["image_size"], **spec.get("kwargs", {}))
    net.load_state_dict(checkpoint["model"])
    return models.Normalized(net, spec["mean"], spec["std"]).eval()


def steps_per_epoch(task: task_.Task, batch_size: int, seed: int,
                    device: torch.device) -> int:
    """Optimizer steps in an epoch, for the schedule: the task's own count, or epoch 1's
    batches counted once with a generator of their own (the trial's stays untouched)."""
    if hasattr(task, "steps_per_epoch"):
        return int(task.steps_per_epoch(batch_size))
    scratch = torch.Generator(device=device).manual_seed(seed)
    return max(1, sum(1 for _ in task.batches(batch_size, 1, scratch)))


def train(cfg: TrialConfig, report: Report, resume: Checkpoint | None = None,
          dataset: data.Dataset | None = None, parallel: Ranks | None = None,
          task: task_.Task | None = None) -> Metrics:
    """Train `cfg` for `cfg.train.epochs`, calling `report(metrics, checkpoint)` each epoch.

    `task`: what is learnt (search/trial/task.py), already built (a warm trial process
    keeps it); None builds the config's (`train.task`, else image classification of
    `cfg.data`, with `dataset` as its data when given). A non-finite training loss ends the
    run: the epoch is reported with `diverged: True` (and the task's `diverged()` metrics:
    `val_acc` 0 for images), and no checkpoint. Returns the last metrics.
    `parallel`: this process is one rank of a data-parallel trial (search/trial/distributed/):
    it trains on its part of every batch, the metrics are the whole group's, and a
    checkpoint is made only on the epochs rank 0 picks (None is reported on the others).
    """
    device = parallel.device if parallel is not None else pick_device(cfg.train.device)
    cuda = device.type == "cuda"
    torch.manual_seed(cfg.train.seed)
    if task is None:
        task = (task_.build(cfg, device) if cfg.train.task is not None else
                image_task.ImageClassification(cfg, device, dataset))
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
    steps = steps_per_epoch(task, cfg.train.batch_size, cfg.train.seed, device)

    model = models.make(cfg.model.name, **task.model_args(), **cfg.model.kwargs)
    channels_last = getattr(task, "channels_last", False)
    model = model.to(device, memory_format=torch.channels_last if channels_last
                     else torch.preserve_format)
    opt = (build_optimizer(cfg, model.parameters()) if parallel is None else
           parallel.optimizer(model.parameters(), *optimizer_args(cfg)))
    schedule = build_schedule(cfg, opt, steps)
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
        # The config's values over the loaded ones (PBT's explored values; a plain resume's
        # are the same): the state stays as loaded.
        retune(opt, schedule, phases.optimizer_at(cfg, start_epoch + 1))
    step_model = parallel.wrap(model) if parallel is not None else model
    step_model = torch.compile(step_model) if cfg.train.compile else step_model
    # Ranks evaluate with the bare model: DDP's forward is a collective.
    eval_model = step_model if parallel is None else model

    def autocast():
        # bf16 autocast on CUDA; on CPU full fp32 keeps resumed runs bitwise equal.
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    throughput = f"{getattr(task, 'unit', 'samples')}_per_s"
    metrics: Metrics = {}
    for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
        model.train()
        if parallel is not None:
            parallel.dropout_seed(cfg.train.seed, epoch)
        if phases.starts(cfg, epoch):  # train.phases: this epoch's values, state kept
            retune(opt, schedule, phases.optimizer_at(cfg, epoch))
        clip = phases.grad_clip_at(cfg, epoch)
        lr = opt.param_groups[0]["lr"]  # the schedule's, retuned or not
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for batch in task.batches(cfg.train.batch_size, epoch, generator):
            if parallel is not None:  # every rank drew the same batch: keep this rank's part
                batch = task_.rows(batch, parallel.part(task_.batch_len(batch)))
            with autocast():
                loss = task.loss(step_model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            schedule.step()
            n = task_.batch_len(batch)
            loss_sum += loss.detach() * n  # stays on device: no sync per step
            seen += n
        if parallel is not None:  # the whole group's mean loss and samples
            loss_sum, seen = parallel.sum(loss_sum, seen)
        train_loss = float(loss_sum / seen)
        if cuda:
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        diverged = not math.isfinite(train_loss)
        if diverged:
            scores = getattr(task, "diverged", dict)()
        else:
            eval_model.eval()
            with torch.no_grad(), autocast():
                scores = task.evaluate(eval_model)
            if cfg.train.task is not None:
                scores = task_.check_metrics(cfg.train.task, scores)
        metrics = {"epoch": epoch, "train_loss": train_loss, **scores, "lr": lr,
                   "epoch_s": time.perf_counter() - t0, throughput: seen / train_s,
                   "diverged": diverged, **adam_values(opt)}
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
            "model_spec": model_spec(cfg, task),
            "metrics": dict(metrics),
        }
        report(metrics, checkpoint)
    return metrics
