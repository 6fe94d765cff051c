"""One Ray Tune trial: the trainer with Ray's report and checkpoint hooks.

The trial gets its sample (from Optuna, via Tune) as `params` and the base config
through `tune.with_parameters`. It never talks to MLflow: the driver tracks every
trial (search/tracking.py), so no tracking URI or credential has to reach the
workers, and a trial retried on another node cannot log twice.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from search import warm
from search.checkpoints import CheckpointPolicy
from search.config import TrialConfig
from search.space import trial_config
from search.trainer import pick_device, train

CHECKPOINT_FILE = "checkpoint.pt"


def load_checkpoint(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    """The trainer state inside a Tune checkpoint (tensors only: weights_only=True)."""
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / CHECKPOINT_FILE, weights_only=True, map_location="cpu")


class Reporter:
    """Hands each epoch's metrics to Tune, with a checkpoint when the policy says so."""

    def __init__(self, policy: CheckpointPolicy) -> None:
        self.policy = policy
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        metrics = {**metrics, "node_id": self.node_id}
        start = time.perf_counter()
        if checkpoint is None or not self.policy.due(metrics["epoch"], start):
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(checkpoint, Path(d) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        end = time.perf_counter()
        self.policy.written(end, end - start)


def run_trial(params: dict[str, Any], base: TrialConfig, rungs: tuple[int, ...] = (),
              checkpoint_period_s: float | None = None) -> None:
    """Train the base config with this trial's sample, resuming from Tune's checkpoint.

    `rungs` and `checkpoint_period_s` say when to checkpoint (search/checkpoints.py).
    """
    cfg = trial_config(base, params)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # a line per checkpoint is noise
    checkpoint = tune.get_checkpoint()
    resume = load_checkpoint(checkpoint) if checkpoint else None
    warm.use_assigned_cpus(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    report = Reporter(CheckpointPolicy(cfg.train.epochs, rungs, checkpoint_period_s))
    try:
        train(cfg, report, resume=resume,
              dataset=warm.dataset(cfg.data, pick_device(cfg.train.device)))
    finally:
        # The process may run another trial next: keep nothing of this one.
        warm.release(compiled=cfg.train.compile or bool(cfg.optimizer.fused))
