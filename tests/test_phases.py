"""`train.phases` (issue 26): a schedule of Adam's values replayed in one run, as PBT's
winner trained under it. Switching at a phase's epoch is what an exploit does to a member
that continues from a checkpoint with new values: the two runs are bitwise equal."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import yaml

from search import config as config_
from search.config import ConfigError, TrialConfig
from search.trial.phases import grad_clip_at, optimizer_at
from search.trial.trainer import train

BASE = {"data": {"dataset": "digits"}, "model": {"name": "mlp"},
        "optimizer": {"lr": 0.003, "beta1": 0.9},
        "train": {"epochs": 3, "batch_size": 64, "device": "cpu", "schedule": "cosine"}}
PHASE = {"epoch": 2, "lr": 0.0012, "beta1": 0.8, "grad_clip": 0.5}


def cfg(**train) -> TrialConfig:
    return TrialConfig.model_validate({**BASE, "train": {**BASE["train"], **train}})


def test_values_in_force_at_each_epoch():
    c = cfg(phases=[PHASE, {"epoch": 3, "eps": 1e-6, "grad_clip": None}])
    assert optimizer_at(c, 1).lr == 0.003 and grad_clip_at(c, 1) is None
    assert (optimizer_at(c, 2).lr, optimizer_at(c, 2).beta1, grad_clip_at(c, 2)) == \
        (0.0012, 0.8, 0.5)
    at3 = optimizer_at(c, 3)
    assert (at3.lr, at3.beta1, at3.eps) == (0.0012, 0.8, 1e-6)
    assert grad_clip_at(c, 3) is None  # given as null: clipping off


@pytest.mark.parametrize("phases, bad", [
    ([{"epoch": 1, "lr": 0.1}], "train.phases.0.epoch: Input should be greater than or "
                                "equal to 2 (got 1)"),
    ([{"epoch": 3, "lr": 0.1}, {"epoch": 2, "lr": 0.2}], "phases[1].epoch 2"),
    ([{"epoch": 4, "lr": 0.1}], "phases[0].epoch 4"),
])
def test_phases_out_of_order_or_past_the_end_are_refused(tmp_path, phases, bad):
    path = tmp_path / "c.yaml"
    raw = yaml.safe_load(config_.dump(cfg()))
    raw["train"]["phases"] = phases
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=re.escape(bad)):
        config_.load(path).trial()


def test_a_phased_run_equals_a_run_retuned_from_its_checkpoint():
    """Epoch 1 under the base values, then the phase's: once in one run, once as PBT's
    exploit does it (a checkpoint after epoch 1, loaded by a run whose config has the
    phase's values)."""
    phased, saved = [], {}
    train(cfg(phases=[PHASE]), lambda m, ck: phased.append(m))
    # A copy, as a checkpoint on disk is: the reported tensors are the live model's.
    train(cfg(epochs=3), lambda m, ck: saved.setdefault("ck", copy.deepcopy(ck)))
    assert saved["ck"]["epoch"] == 1
    retuned = []
    explored = TrialConfig.model_validate({
        **BASE, "optimizer": {**BASE["optimizer"], "lr": 0.0012, "beta1": 0.8},
        "train": {**BASE["train"], "grad_clip": 0.5}})
    train(explored, lambda m, ck: retuned.append(m), resume=saved["ck"])
    assert [m["epoch"] for m in retuned] == [2, 3]
    assert phased[0]["beta1"] == 0.9 and phased[1]["beta1"] == 0.8
    for a, b in zip(phased[1:], retuned, strict=True):
        torch.testing.assert_close(
            {k: a[k] for k in ("train_loss", "val_loss", "val_acc", "lr", "beta1")},
            {k: b[k] for k in ("train_loss", "val_loss", "val_acc", "lr", "beta1")},
            rtol=0, atol=0)


def test_a_phased_config_reads_back_equal_with_only_what_was_given(tmp_path):
    c = cfg(phases=[{"epoch": 2, "lr": 0.001}, {"epoch": 3, "grad_clip": None}])
    text = config_.dump(c)
    assert yaml.safe_load(text)["train"]["phases"] == [{"epoch": 2, "lr": 0.001},
                                                       {"epoch": 3, "grad_clip": None}]
    (tmp_path / "c.yaml").write_text(text)
    back = config_.load(tmp_path / "c.yaml").trial()
    assert back == c and grad_clip_at(back, 2) is None and optimizer_at(back, 3).lr == 0.001
    assert "phases" not in yaml.safe_load(config_.dump(cfg()))["train"]
