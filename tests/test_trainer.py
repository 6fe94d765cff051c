from __future__ import annotations

import io
import math

import pytest
import torch

from search.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig, TrialConfig
from search.trial.trainer import train

TIMING = {"epoch_s", "images_per_s"}


def digits_config(**train_kwargs) -> TrialConfig:
    return TrialConfig(
        data=DataConfig(dataset="digits", crop_padding=1),  # augmentation uses the data RNG
        model=ModelConfig(name="cnn"),  # dropout uses the global RNG
        optimizer=OptimizerConfig(lr=2e-3),
        train=TrainConfig(batch_size=64, schedule="onecycle", device="cpu", **train_kwargs),
    )


def collect(cfg: TrialConfig, resume=None) -> tuple[list[dict], dict[int, bytes]]:
    """Train and keep every epoch's metrics and its checkpoint serialised to bytes."""
    history, checkpoints = [], {}

    def report(metrics, checkpoint):
        history.append(metrics)
        if checkpoint is not None:
            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            checkpoints[metrics["epoch"]] = buf.getvalue()

    train(cfg, report, resume=resume)
    return history, checkpoints


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


def test_reports_every_metric_once_per_epoch():
    history, checkpoints = collect(digits_config(epochs=2))
    assert [m["epoch"] for m in history] == [1, 2]
    for m in history:
        assert set(m) >= {"epoch", "train_loss", "val_loss", "val_acc", "lr", "epoch_s",
                          "images_per_s", "diverged"}
        assert 0 <= m["val_acc"] <= 1 and m["images_per_s"] > 0 and not m["diverged"]
    assert sorted(checkpoints) == [1, 2]


def test_resumed_run_repeats_the_remaining_epochs_bitwise():
    full, checkpoints = collect(digits_config(epochs=4))
    state = torch.load(io.BytesIO(checkpoints[2]), weights_only=True)
    resumed, _ = collect(digits_config(epochs=4), resume=state)
    assert [m["epoch"] for m in resumed] == [3, 4]
    assert without_timing(resumed) == without_timing(full[2:])


def test_checkpoint_holds_model_optimizer_scheduler_epoch_and_rng():
    _, checkpoints = collect(digits_config(epochs=1))
    state = torch.load(io.BytesIO(checkpoints[1]), weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "model_spec"} <= set(state)
    assert set(state["rng"]) >= {"cpu", "data"}


def test_exploding_learning_rate_ends_as_diverged_not_a_crash():
    cfg = TrialConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(name="mlp"),
        optimizer=OptimizerConfig(lr=1e12),
        train=TrainConfig(epochs=5, batch_size=64, device="cpu"),
    )
    history, checkpoints = collect(cfg)
    last = history[-1]
    assert last["diverged"] is True and last["val_acc"] == 0.0
    assert not math.isfinite(last["train_loss"])
    assert last["epoch"] not in checkpoints
    assert len(history) < 5


@pytest.mark.parametrize("model", ["resnet18", "resnet9"])
def test_resnets_train_on_synthetic_cifar_shaped_data(model):
    cfg = TrialConfig(
        data=DataConfig(dataset="synthetic", synthetic_samples=48, synthetic_shape=(3, 32, 32),
                        crop_padding=4, flip=True),
        model=ModelConfig(name=model),
        train=TrainConfig(epochs=1, batch_size=16, device="cpu"),
    )
    history, checkpoints = collect(cfg)
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    state = torch.load(io.BytesIO(checkpoints[1]), weights_only=True)
    assert state["model_spec"]["in_channels"] == 3 and state["model_spec"]["image_size"] == 32


@pytest.mark.parametrize(("state_dtype", "fused"), [("bf16", None), ("int8", None), ("int8", True)])
def test_low_memory_optimizer_state_trains_through_the_config(state_dtype, fused):
    cfg = digits_config(epochs=2).model_copy(update={
        "optimizer": OptimizerConfig(lr=2e-3, state_dtype=state_dtype, fused=fused)})
    history, _ = collect(cfg)
    assert history[-1]["val_acc"] > 0.5


TRIAL_WITHOUT_COMPILE = """
import io, sys, torch
from search.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig, TrialConfig
from search.trial.trainer import train
cfg = TrialConfig(data=DataConfig(dataset="digits"), model=ModelConfig(name="cnn"),
                  optimizer=OptimizerConfig(lr=2e-3, fused={fused}),
                  train=TrainConfig(epochs=2, batch_size=64, schedule="onecycle", device="cpu"))
saved = {{}}
def report(metrics, checkpoint):
    if checkpoint is not None:
        buf = io.BytesIO(); torch.save(checkpoint, buf); saved[metrics["epoch"]] = buf.getvalue()
train(cfg, report)
train(cfg, report, resume=torch.load(io.BytesIO(saved[1]), weights_only=True))
print("torch._dynamo" in sys.modules)
"""


@pytest.mark.parametrize(("fused", "dynamo"), [(None, False), (True, True)])
def test_a_trial_imports_torch_dynamo_only_when_it_compiles(fused, dynamo):
    # A trial process that never compiles skips torch._dynamo's ~1 s import (optim/base.py):
    # training, checkpointing and resuming included. A fused CPU step compiles, and needs it.
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, "-c", TRIAL_WITHOUT_COMPILE.format(fused=fused)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(dynamo)
