"""One Ray Tune trial: the trainer with Ray's report and checkpoint hooks.

The trial gets its sample (from Optuna, via Tune) as `params` and the base config
through `tune.with_parameters`. It never talks to MLflow: the driver tracks every
trial (search/record/tracking.py), so no tracking URI or credential has to reach the
workers, and a trial retried on another node cannot log twice.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from search import full_disk
from search.config import ConfigError, DataConfig, TrialConfig
from search.space import trial_config
from search.trial import warm
from search.trial.checkpoints import CheckpointPolicy
from search.trial.trainer import METRICS, pick_device, train

CHECKPOINT_FILE = "checkpoint.pt"
# A multi-worker trial's checkpoints are its Ray Train run's; its results name the latest
# under this key (search/trial/distributed/trial.py).
CHECKPOINT_URI = "checkpoint_path"
# Errors that a retry would meet again: bad input the driver could not see (a dataset's
# files corrupt, a config the trainer or model rejects, a plug-in that does not import).
# Anything else (a lost node, a killed process, CUDA running out of memory) is Ray's to
# retry, up to search.max_failures.
DETERMINISTIC = (ConfigError, ImportError, ValueError, TypeError, AttributeError, KeyError,
                 NotImplementedError)


def load_checkpoint(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    """The trainer state inside a Tune (or Ray Train) checkpoint (weights_only=True)."""
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / CHECKPOINT_FILE, weights_only=True, map_location="cpu")


def result_checkpoint(result) -> tune.Checkpoint | None:
    """A finished trial's last checkpoint: Tune's own, or (several workers) its Train run's."""
    if result.checkpoint is not None:
        return result.checkpoint
    uri = (result.metrics or {}).get(CHECKPOINT_URI)
    return tune.Checkpoint(uri) if uri else None


def report_checkpoint(send, checkpoint_type, metrics: dict[str, Any],
                      checkpoint: dict[str, Any]) -> None:
    """`send(metrics, checkpoint=...)` (tune.report or ray.train.report) with the trainer
    state written to a temporary folder as a `checkpoint_type` (Tune's or Train's)."""
    full_disk.atomic_copies()  # a checkpoint in storage is whole, or not there
    try:
        with tempfile.TemporaryDirectory() as d:
            torch.save(checkpoint, Path(d) / CHECKPOINT_FILE)
            send(metrics, checkpoint=checkpoint_type.from_directory(d))
    except OSError as e:
        if full_disk.is_full(e):  # the driver stops the search on it (search/full_disk.py)
            raise full_disk.DiskFullError(f"no space left on device for the checkpoint "
                                          f"of epoch {metrics['epoch']}") from None
        raise


def error_result(epoch: int, error: BaseException, metric: str = "val_acc") -> dict[str, Any]:
    """The last result of a trial that failed in a way a retry would meet again: every
    metric NaN, `metric` (the search's) included, so that Ray finds it in the result."""
    return {**dict.fromkeys((*METRICS, metric), float("nan")), "epoch": epoch,
            "diverged": False,
            "error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}


def with_metric(metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    """`metrics` with the search's metric in it: NaN (ranked last) where a task reported
    none (a diverged run of a task without `diverged()`); Ray stops a search at a result
    without it."""
    return metrics if metric in metrics else {**metrics, metric: float("nan")}


class Reporter:
    """Hands each epoch's metrics to Tune, with a checkpoint when the policy says so."""

    def __init__(self, policy: CheckpointPolicy, metric: str = "val_acc") -> None:
        self.policy = policy
        self.metric = metric
        self.node_id = ray.get_runtime_context().get_node_id()
        self.last_epoch = 0

    def __call__(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        self.last_epoch = metrics["epoch"]
        metrics = {**with_metric(metrics, self.metric), "node_id": self.node_id}
        start = time.perf_counter()
        if checkpoint is None or not self.policy.due(metrics["epoch"], start):
            tune.report(metrics)
            return
        report_checkpoint(tune.report, tune.Checkpoint, metrics, checkpoint)
        end = time.perf_counter()
        self.policy.written(end, end - start)


def run_trial(params: dict[str, Any], base: TrialConfig, rungs: tuple[int, ...] = (),
              checkpoint_period_s: float | None = None, metric: str = "val_acc") -> None:
    """Train the base config with this trial's sample, resuming from Tune's checkpoint.

    `rungs` and `checkpoint_period_s` say when to checkpoint (search/trial/checkpoints.py);
    `metric` is the search's, in every result.
    """
    cfg = trial_config(base, params)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # a line per checkpoint is noise
    checkpoint = tune.get_checkpoint()
    resume = load_checkpoint(checkpoint) if checkpoint else None
    warm.use_assigned_cpus(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    report = Reporter(CheckpointPolicy(cfg.train.epochs, rungs, checkpoint_period_s), metric)
    try:
        train(cfg, report, resume=resume, task=warm.task(cfg, pick_device(cfg.train.device)))
    except DETERMINISTIC as e:
        # It would fail the same way on a retry: end the trial as failed, with the reason,
        # instead of raising (Ray retries whatever a trial raises, up to max_failures).
        tune.report(error_result(report.last_epoch, e, metric))
    finally:
        # The process may run another trial next: keep nothing of this one.
        warm.release(compiled=cfg.train.compile or bool(cfg.optimizer.fused))


def preload() -> None:
    """Ray's worker_process_setup_hook: what the first trial of a process would pay.

    Runs when a worker process starts, before any trial is placed on it, while the driver is
    still setting up, so the first trial on the process starts training at once. Imports
    the trial's code (torch, models, optim, Ray's session and storage), builds an
    optimizer once and loads the search's dataset on the host. torch._dynamo stays out
    (optim/base.py) unless a trial compiles."""
    import optim

    optim.Adam([torch.zeros(1, requires_grad=True)])
    warm.quiet_train_logs()
    raw = os.environ.get(warm.PRELOAD_ENV)
    if raw:
        # A bad dataset is the trial's to report, with its config; here it stays unloaded.
        with contextlib.suppress(Exception):
            warm.dataset(DataConfig.model_validate(json.loads(raw)), torch.device("cpu"))
    # What is loaded now stays for the process's life: keep the garbage collector from
    # scanning it again (a full collection over torch's 400k objects takes 0.2 s, which
    # `release` would otherwise pay after every trial).
    gc.collect()
    gc.freeze()
