"""A training task of the user's (search/trial/task.py) in the trainer, without Ray: the two
examples train, resume bitwise, diverge cleanly, rebuild for deployment, split over two
ranks as one process would; every bad task is refused before Ray with one line."""

from __future__ import annotations

import copy
import math
import sys
import textwrap

import pytest
import torch

from search import preflight
from search.config import ConfigError, SearchConfig, TrialConfig
from search.record import results
from search.record.tracking import tracked
from search.trial import task as task_
from search.trial.trainer import deployable, train
from tests.conftest import ROOT, run_module

REGRESSION = ROOT / "conf" / "regression"
CHARLM = ROOT / "conf" / "charlm"
for folder in (REGRESSION, CHARLM):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def regression(epochs: int = 4, **train) -> TrialConfig:
    return TrialConfig.model_validate({
        "train": {"task": "diabetes:Diabetes", "epochs": epochs, "batch_size": 32,
                  "device": "cpu", **train},
        "model": {"name": "diabetes:regressor", "kwargs": {"hidden": 32}},
        "optimizer": {"lr": 3e-3}})


def history(cfg: TrialConfig, resume=None) -> tuple[list[dict], list[dict]]:
    metrics, checkpoints = [], []

    def report(m, c):
        metrics.append({k: v for k, v in m.items() if k not in ("epoch_s", "patients_per_s")})
        checkpoints.append(copy.deepcopy(c))  # as written to disk: later steps change tensors
    train(cfg, report, resume=resume)
    return metrics, checkpoints


def test_a_regression_task_trains_and_reports_its_own_metrics():
    metrics, checkpoints = history(regression())
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    first, last = metrics[0], metrics[-1]
    assert set(last) == {"epoch", "train_loss", "val_rmse", "val_mae", "lr", "diverged",
                         "beta1", "beta2", "eps", "weight_decay"}
    assert last["val_rmse"] < first["val_rmse"] and not last["diverged"]
    assert 40 < last["val_rmse"] < 100  # the target's units (25..346)
    spec = checkpoints[-1]["model_spec"]
    assert spec["task"] == "diabetes:Diabetes" and spec["args"]["in_features"] == 10
    assert tuple(spec["example"].shape) == (2, 10)
    # The reported throughput is in the task's unit, and MLflow gets every val_* metric.
    full = []
    train(regression(epochs=1), lambda m, c: full.append(m))
    assert "patients_per_s" in full[0]
    assert set(tracked({**full[0], "node_id": "x", "timestamp": 1})) == {
        "train_loss", "val_rmse", "val_mae", "lr", "epoch_s", "patients_per_s"}


def test_a_task_run_resumed_from_a_checkpoint_repeats_the_rest_bitwise():
    whole, checkpoints = history(regression(epochs=4))
    rest, _ = history(regression(epochs=4), resume=checkpoints[1])
    assert rest == whole[2:]


def test_the_deployable_network_is_the_trained_one():
    cfg = regression(epochs=2)
    _, checkpoints = history(cfg)
    net = deployable(checkpoints[-1])
    task = task_.build(cfg, torch.device("cpu"))
    with torch.no_grad():
        rebuilt = task.evaluate(net)
    assert rebuilt["val_rmse"] == pytest.approx(checkpoints[-1]["metrics"]["val_rmse"],
                                                rel=1e-6)
    assert not isinstance(net, torch.nn.Sequential) and not net.training


def test_a_diverged_task_run_ends_without_a_checkpoint():
    cfg = regression(epochs=3).model_copy(update={"optimizer": regression().optimizer
                                                  .model_copy(update={"lr": 1e12})})
    metrics, checkpoints = history(cfg)
    assert metrics[-1]["diverged"] and checkpoints[-1] is None
    assert len(metrics) < 3 and "val_rmse" not in metrics[-1]  # ranked last: NaN in Ray


def test_a_character_language_model_learns_bits_per_char():
    cfg = TrialConfig.model_validate({
        "train": {"task": "charlm.task:CharLM", "task_kwargs": {"context": 32},
                  "epochs": 2, "batch_size": 32, "device": "cpu"},
        "model": {"name": "charlm.task:causal_cnn", "kwargs": {"width": 32, "layers": 2}},
        "optimizer": {"lr": 3e-3}})
    metrics, checkpoints = history(cfg)
    assert metrics[-1]["val_bits_per_char"] < metrics[0]["val_bits_per_char"] < 6
    assert metrics[-1]["val_loss"] == pytest.approx(
        metrics[-1]["val_bits_per_char"] * math.log(2))
    assert checkpoints[-1]["model_spec"]["example"].dtype == torch.int64


def _rank(rank: int, world: int, port: int, cfg_json: str, out: str) -> None:
    import torch.distributed as dist

    from search.trial.distributed.ranks import Ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        got = []
        train(TrialConfig.model_validate_json(cfg_json), lambda m, c: got.append((m, c)),
              parallel=Ranks(torch.device("cpu"), False))
        if rank == 0:
            torch.save({"metrics": [m for m, _ in got], "model": got[-1][1]["model"]}, out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_of_a_task_take_the_steps_one_process_takes(tmp_path):
    """The trainer gives each rank its part of every batch: no part of the task knows its
    rank, and two ranks end where one process ends (up to float sums' order)."""
    import socket

    import torch.multiprocessing as mp

    cfg = regression(epochs=2)
    single, checkpoints = history(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank, args=(2, port, cfg.model_dump_json(), out), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    for a, b in zip(two["metrics"], single, strict=True):
        assert a["val_rmse"] == pytest.approx(b["val_rmse"], rel=1e-4)
    for key, value in checkpoints[-1]["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5)


def test_ties_break_on_the_metric_the_task_names():
    assert results.tie_breaker("val_rmse", "diabetes:Diabetes") == ("val_mae", 1)
    assert results.tie_breaker("val_mae", "diabetes:Diabetes") is None  # itself: start order
    assert results.tie_breaker("val_bits_per_char", "charlm.task:CharLM") is None
    assert results.tie_breaker("val_acc") == ("val_loss", 1)  # image classification's


# ---------------------------------------------------------------- refused before Ray

BAD_TASKS = '''
import math
import torch
from torch import nn


class Good:
    def __init__(self, device, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def model_args(self):
        return {"in_features": 3}

    def batches(self, batch_size, epoch, generator):
        yield self.x[:batch_size], self.y[:batch_size]

    def loss(self, model, batch):
        return nn.functional.mse_loss(model(batch[0]), batch[1])

    def evaluate(self, model):
        return {"val_mse": nn.functional.mse_loss(model(self.x), self.y).item()}

    def example_input(self):
        return self.x[:2]


def linear(in_features):
    return nn.Linear(in_features, 1)


class NoLoss:
    def __init__(self, device): pass
    def model_args(self): return {}
    def batches(self, *a): return []
    def evaluate(self, model): return {}
    def example_input(self): return torch.zeros(1)


class VectorLoss(Good):
    def loss(self, model, batch):
        return (model(batch[0]) - batch[1]).pow(2)


class DetachedLoss(Good):
    def loss(self, model, batch):
        return super().loss(model, batch).detach()


class ConstantLoss(Good):
    def loss(self, model, batch):
        return torch.ones((), requires_grad=True)


class ListEval(Good):
    def evaluate(self, model):
        return [1.0]


class NanEval(Good):
    def evaluate(self, model):
        return {"val_mse": math.nan}


class UnprefixedEval(Good):
    def evaluate(self, model):
        return {"mse": 1.0}


class StringEval(Good):
    def evaluate(self, model):
        return {"val_mse": "low"}


class RaisingInit(Good):
    def __init__(self, device):
        raise FileNotFoundError("corpus.txt")


class RaisingBatches(Good):
    def batches(self, batch_size, epoch, generator):
        raise IndexError("out of range")
        yield


class EmptyEpoch(Good):
    def batches(self, batch_size, epoch, generator):
        return iter(())


class BadTie(Good):
    tie_break = ("val_other", "min")
'''


def bad(tmp_path, task: str, metric: str = "val_mse", **train) -> SearchConfig:
    (tmp_path / "badtasks.py").write_text(textwrap.dedent(BAD_TASKS))
    if str(tmp_path) not in sys.path:
        sys.path.insert(0, str(tmp_path))
    sys.modules.pop("badtasks", None)
    return SearchConfig.model_validate({
        "train": {"task": f"badtasks:{task}", "epochs": 1, "batch_size": 8, **train},
        "model": {"name": "badtasks:linear"}, "search": {"metric": metric, "mode": "min"}})


@pytest.mark.parametrize(("task", "metric", "message"), [
    ("Good", "val_mse", None),
    ("Missing", "val_mse", "cannot import it: AttributeError"),
    ("NoLoss", "val_mse", "has no method loss"),
    ("VectorLoss", "val_mse", "loss returned a tensor of shape (8, 1), not a scalar"),
    ("DetachedLoss", "val_mse", "loss has no gradient"),
    ("ConstantLoss", "val_mse", "loss has no gradient for any of the model's parameters"),
    ("ListEval", "val_mse", "evaluate returned list"),
    ("NanEval", "val_mse", "evaluate returned val_mse=nan, not a finite number"),
    ("UnprefixedEval", "val_mse", "evaluate returned the key 'mse'; metric names start"),
    ("StringEval", "val_mse", "evaluate returned val_mse='low', not a number"),
    ("RaisingInit", "val_mse", "building it raised FileNotFoundError: corpus.txt"),
    ("RaisingBatches", "val_mse", "batches raised IndexError: out of range"),
    ("EmptyEpoch", "val_mse", "batches yielded NoneType, not a tuple of tensors"),
    ("BadTie", "val_mse", "tie_break ('val_other', 'min')"),
    ("Good", "val_rmse", "search.metric 'val_rmse': no trial reports it; train.task "
                         "'badtasks:Good' and the trainer report epoch, train_loss, val_mse"),
])
def test_a_task_is_tried_once_before_ray_starts(tmp_path, task, metric, message):
    cfg = bad(tmp_path, task, metric)
    if message is None:
        preflight.check(cfg)
        return
    with pytest.raises(ConfigError) as e:
        preflight.check(cfg)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert str(e.value).startswith(("train.task 'badtasks:", "search.metric"))


def test_the_command_refuses_a_bad_task_in_one_line_before_ray(tmp_path):
    bad(tmp_path, "DetachedLoss")
    (tmp_path / "search.yaml").write_text(
        "train: {task: badtasks:DetachedLoss, epochs: 1, batch_size: 8}\n"
        "model: {name: badtasks:linear}\nsearch: {metric: val_mse, mode: min}\n")
    r = run_module("search.run", "search.yaml", "--storage-path", str(tmp_path / "runs"),
                   cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "loss has no gradient" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------- image classification


def loop_before_tasks(cfg: TrialConfig) -> list[dict]:
    """The trainer's single-process loop as it was before tasks (commit d2b28e6), written
    out: image classification hard-wired. The per-epoch numbers it gives are the ones image
    searches gave before; the task-based trainer must give them bitwise."""
    import models
    from search.trial import data
    from search.trial.trainer import build_optimizer, build_schedule

    torch.manual_seed(cfg.train.seed)
    ds = data.load(cfg.data)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    loader = data.DeviceLoader(ds.train, cfg.train.batch_size, ds.mean, ds.std, train=True,
                               generator=generator, crop_padding=cfg.data.crop_padding,
                               flip=cfg.data.flip)
    val_loader = data.DeviceLoader(ds.val, 1024, ds.mean, ds.std, train=False)
    model = models.build(cfg.model.name, ds.num_classes, ds.in_channels, ds.image_size,
                         **cfg.model.kwargs)
    opt = build_optimizer(cfg, model.parameters())
    schedule = build_schedule(cfg, opt, len(loader))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    out = []
    for epoch in range(1, cfg.train.epochs + 1):
        model.train()
        lr = schedule.get_last_lr()[0]
        loss_sum, seen = torch.zeros(()), 0
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            schedule.step()
            loss_sum += loss.detach() * len(yb)
            seen += len(yb)
        model.eval()
        val_sum, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for xb, yb in val_loader:
                logits = model(xb)
                val_sum += torch.nn.functional.cross_entropy(logits.float(), yb,
                                                             reduction="sum").item()
                correct += (logits.argmax(1) == yb).sum().item()
                count += len(yb)
        out.append({"epoch": epoch, "train_loss": float(loss_sum / seen),
                    "val_loss": val_sum / count, "val_acc": correct / count, "lr": lr,
                    "diverged": False})
    return out


@pytest.mark.parametrize("raw", [
    {"model": {"name": "cnn"}, "data": {"crop_padding": 1, "flip": True},
     "train": {"epochs": 3, "batch_size": 64, "schedule": "onecycle", "label_smoothing": 0.1,
               "grad_clip": 1.0}},
    {"model": {"name": "mlp"}, "optimizer": {"state_dtype": "int8"},
     "train": {"epochs": 3, "batch_size": 128, "schedule": "cosine"}},
])
def test_a_seeded_digits_trial_keeps_its_exact_numbers(raw):
    cfg = TrialConfig.model_validate({**raw, "train": {**raw["train"], "device": "cpu"}})
    now, adam = [], []
    adam_keys = ("beta1", "beta2", "eps", "weight_decay")
    train(cfg, lambda m, c: (now.append({k: v for k, v in m.items() if k not in
                                         ("epoch_s", "images_per_s", *adam_keys)}),
                             adam.append(tuple(m[k] for k in adam_keys))))
    assert now == loop_before_tasks(cfg)  # bitwise: every float equal
    o = cfg.optimizer  # Adam's values as each epoch trained with them (PBT changes them)
    assert set(adam) == {(o.beta1, o.beta2, o.eps, o.weight_decay)}
