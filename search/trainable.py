"""One Ray Tune trial: the trainer with Ray's report and checkpoint hooks.

The trial gets its sample (from Optuna, via Tune) as `params` and the base config
through `tune.with_parameters`. It never talks to MLflow: the driver tracks every
trial (search/tracking.py), so no tracking URI or credential has to reach the
workers, and a trial retried on another node cannot log twice.
"""

from __future__ import annotations

import gc
import logging
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from search.config import TrialConfig
from search.space import trial_config
from search.trainer import train

CHECKPOINT_FILE = "checkpoint.pt"


def load_checkpoint(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    """The trainer state inside a Tune checkpoint (tensors only: weights_only=True)."""
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / CHECKPOINT_FILE, weights_only=True, map_location="cpu")


def report(metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
    """Hand one epoch's metrics, and its checkpoint, to Tune."""
    metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id()}
    if checkpoint is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(checkpoint, Path(d) / CHECKPOINT_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def run_trial(params: dict[str, Any], base: TrialConfig) -> None:
    """Train the base config with this trial's sample, resuming from Tune's checkpoint."""
    cfg = trial_config(base, params)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # a line per checkpoint is noise
    checkpoint = tune.get_checkpoint()
    resume = load_checkpoint(checkpoint) if checkpoint else None
    try:
        train(cfg, report, resume=resume)
    finally:
        # Free this trial's GPU memory before the process runs anything else.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
