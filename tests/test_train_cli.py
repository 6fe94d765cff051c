"""`python -m search.train` as a user runs it."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_module


def test_digits_reaches_95_percent_with_default_optimizer(tmp_path):
    out = tmp_path / "out"
    proc = run_module("search.train", "conf/digits.yaml", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    history = json.loads((out / "metrics.json").read_text())
    assert history[-1]["val_acc"] >= 0.95
    assert proc.stdout.count("epoch ") == len(history)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == len(history)


def test_cifar_without_data_or_network_is_one_clear_line(tmp_path):
    proc = run_module("search.train", "conf/cifar.yaml", "--set", f"data.root={tmp_path}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "cifar-10-batches-py" in lines[0] and str(tmp_path) in lines[0]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("optimizer: {lr: -0.1}", "optimizer.lr"),
        ("optimizer: {betas: [0.9, 0.99]}", "optimizer.betas: unknown field"),
        ("train: {epochs: many}", "train.epochs"),
        ("model: {name: vgg}", "unknown model 'vgg'"),
        ("data: {dataset: imagenet}", "data.dataset"),
    ],
)
def test_bad_config_exits_2_with_one_line(write_yaml, tmp_path, text, expected):
    out = tmp_path / "out"
    proc = run_module("search.train", str(write_yaml(text)), "--out", str(out))
    assert proc.returncode == 2
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert not out.exists()


def test_diverging_run_exits_nonzero_and_says_so(tmp_path):
    proc = run_module("search.train", "conf/digits.yaml", "--set", "optimizer.lr=1e12",
                      "--set", "model.name=mlp", "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "diverged" in proc.stdout
