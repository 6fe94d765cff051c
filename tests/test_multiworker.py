"""Trials over several workers (search/trial/distributed/): data-parallel parity with one worker,
ZeRO-sharded Adam state, consolidated checkpoints, placement and concurrency, and a real
search of two-worker trials on a local Ray, with ASHA pruning and a registered champion.

Every Ray Train run here is real: a TorchTrainer with gloo workers on this machine's Ray.
"""

from __future__ import annotations

import copy

import pytest
import ray
import torch

import models
import optim
from search.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    ResourcesConfig,
    SearchConfig,
    TrainConfig,
    TrialConfig,
)
from search.trial.distributed.placement import concurrent_trials, worker_slots
from search.trial.distributed.ranks import batch_part
from search.trial.distributed.trial import torch_trainer
from search.trial.trainable import load_checkpoint
from search.trial.trainer import train

CPU_WORKER = {"CPU": 1.0, "GPU": 0.0}


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize("size,world", [(64, 2), (64, 4), (10, 3), (1, 1)])
def test_batch_parts_cover_the_batch_once(size, world):
    parts = [batch_part(size, r, world) for r in range(world)]
    rows = [i for p in parts for i in range(size)[p]]
    assert rows == list(range(size))  # contiguous, in order, no row twice
    if size % world == 0:
        assert {p.stop - p.start for p in parts} == {size // world}


def test_worker_slots_count_per_node():
    nodes = [{"CPU": 3.0}, {"CPU": 3.0, "GPU": 1.0}, {"CPU": 0.0}]
    assert worker_slots(nodes, {"CPU": 2.0, "GPU": 0.0}) == 2  # one per 3-CPU node, not 6 // 2
    assert worker_slots(nodes, {"CPU": 1.0, "GPU": 1.0}) == 1
    resources = ResourcesConfig(workers_per_trial=2, cpus_per_worker=1)
    assert concurrent_trials(nodes, resources) == 3
    with pytest.raises(ConfigError, match=r"resources.workers_per_trial 8: the cluster has "
                                          r"room for 6 workers"):
        concurrent_trials(nodes, resources.model_copy(update={"workers_per_trial": 8}))


@pytest.mark.parametrize("raw,message", [
    ({"optimizer": {"shard_state": True, "state_dtype": "int8"},
      "resources": {"workers_per_trial": 2}}, "shard_state supports state_dtype fp32 only"),
    ({"train": {"batch_size": 100}, "resources": {"workers_per_trial": 3}},
     "train.batch_size 100 is not a multiple of resources.workers_per_trial 3"),
])
def test_config_refuses_what_cannot_be_sharded(raw, message):
    from search import config

    with pytest.raises(ConfigError, match=message):
        config.validate(SearchConfig, raw, "conf.yaml")


# ---------------------------------------------------------------- real Ray Train runs


def digits_mlp(epochs: int, shard_state: bool = False) -> TrialConfig:
    # No dropout, no batch norm: a rank's forward on its part of a batch is exactly what a
    # single process computes on those rows. 64 wide on digits' 64 pixels: two 64x64 weight
    # matrices, which ZeRO-1 (it assigns whole tensors to ranks) splits about evenly.
    return TrialConfig(data=DataConfig(dataset="digits"),
                       model=ModelConfig(name="mlp", kwargs={"hidden": 64}),
                       optimizer=OptimizerConfig(lr=3e-3, shard_state=shard_state),
                       train=TrainConfig(epochs=epochs, batch_size=64, device="cpu"))


def one_process(cfg: TrialConfig, resume=None) -> dict:
    """The last checkpoint of a single-process run of `cfg`."""
    last = {}
    train(cfg, lambda metrics, checkpoint: last.update(checkpoint=checkpoint), resume=resume)
    return last["checkpoint"]


def ray_train(cfg: TrialConfig, path, name: str, workers: int = 2):
    """A Ray Train run of `cfg` on `workers` gloo workers: (last metrics, last checkpoint)."""
    result = torch_trainer(cfg, workers=workers, worker=CPU_WORKER, storage=str(path),
                           name=name).fit()
    return result.metrics, load_checkpoint(result.checkpoint)


@pytest.fixture(scope="module")
def two_workers(local_ray, tmp_path_factory):
    """3 epochs of digits on 2 workers: {"plain": (metrics, checkpoint), "sharded": ...}."""
    path = tmp_path_factory.mktemp("train")
    return {"plain": ray_train(digits_mlp(3), path, "plain"),
            "sharded": ray_train(digits_mlp(3, shard_state=True), path, "sharded")}


# Parity tolerance. DDP sums the two ranks' gradients and halves them; one process sums all
# 64 rows at once: the same numbers added in another order, so each gradient differs by a
# few fp32 ulps. Adam divides by sqrt(v) + eps, which turns such a difference in a weight
# whose gradient is near zero into a step-sized one, and training compounds it; so the
# check is per tensor, on the relative L2 distance. Measured on digits, lr 3e-3: with this
# 64-wide mlp at most 3.9e-7 after 3 epochs and after a 4th continued on one worker; with
# the default 256-wide one 5.9e-5 and 5.2e-4 (more weights with near-zero gradients). The
# bugs this guards against are 100x beyond 1e-3: training on half the batch (a rank
# ignoring the other's gradient) puts every tensor at least 0.10 away after 3 epochs,
# summing the gradients instead of averaging them (twice the step) at least 0.16.
PARITY = 1e-3


def assert_same_weights(got: dict, expected: dict, tolerance: float = PARITY) -> None:
    for name, weight in expected.items():
        distance = float((got[name] - weight).norm() / weight.norm())
        assert distance < tolerance, f"{name}: relative L2 distance {distance:.2e}"


def test_two_workers_take_the_same_steps_as_one(two_workers):
    metrics, double = two_workers["plain"]
    single = one_process(digits_mlp(3))
    assert metrics["workers"] == 2 and metrics["epoch"] == 3
    assert_same_weights(double["model"], single["model"])
    # Metrics are the whole group's: validation over both ranks' parts equals one process's.
    assert metrics["val_acc"] == pytest.approx(single["metrics"]["val_acc"], abs=1 / 360)

    # The two-worker checkpoint is an ordinary one: a one-worker trial continues from it.
    longer = digits_mlp(epochs=4)
    # (A copy: loading an optimizer state adopts its tensors, and training updates them.)
    resumed = one_process(longer, resume=copy.deepcopy(double))
    straight = one_process(longer)
    assert resumed["epoch"] == 4
    assert_same_weights(resumed["model"], straight["model"])


def test_zero_shards_adam_state_and_consolidates_it(two_workers):
    (plain_metrics, plain), (sharded_metrics, sharded) = (two_workers["plain"],
                                                          two_workers["sharded"])
    net = models.build("mlp", 10, 1, 8, hidden=64)
    params = sum(p.numel() for p in net.parameters())
    whole = plain_metrics["state_bytes_per_rank"]
    halves = sharded_metrics["state_bytes_per_rank"]
    assert whole == [8 * params, 8 * params]  # exp_avg and exp_avg_sq, fp32, on every rank
    assert sum(halves) == 8 * params
    assert max(halves) <= 0.55 * 8 * params  # each rank about half (whole tensors: 52.8%)

    # The same steps: ZeRO changes where the state lives, not the update.
    for name, weight in plain["model"].items():
        torch.testing.assert_close(sharded["model"][name], weight)

    # The consolidated state is a plain optim.Adam state dict, equal to the unsharded one.
    adam = optim.Adam(net.parameters(), lr=3e-3)
    adam.load_state_dict(sharded["optimizer"])
    expected = plain["optimizer"]["state"]
    assert len(adam.state) == len(expected) == len(list(net.parameters()))
    for i, p in enumerate(net.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(adam.state[p][key], expected[i][key])


# ---------------------------------------------------------------- a real search


def two_worker_search(tmp_path, name: str, **overrides):
    """A search of 2-worker trials (ZeRO-sharded Adam) with ASHA on digits, in this process,
    on the Ray this test runs (2 CPUs: one trial at a time fits)."""
    from search import run_search

    cfg = SearchConfig.model_validate({
        "data": {"dataset": "digits"}, "model": {"name": "mlp"},
        "train": {"epochs": 3, "batch_size": 64, "device": "cpu"},
        "optimizer": {"shard_state": True},
        # A good first trial, then a slow learner: ASHA has something to prune.
        "search": {"num_samples": 2, "max_concurrent": 2, "seed": 0,
                   "points_to_evaluate": [{"lr": 0.003}, {"lr": 0.0001}]},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"workers_per_trial": 2, "cpus_per_worker": 1},
        "mlflow": {"register_as": f"{name}-model"}, **overrides})
    return run_search(cfg, name=name, storage_path=str(tmp_path / "runs"),
                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", show_progress=False)


def test_a_search_of_two_worker_trials(local_ray, tmp_path):
    import subprocess
    import sys

    import mlflow
    from mlflow.tracking import MlflowClient

    from tests.conftest import ROOT

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'yours.db'}")  # the caller's own store
    try:
        result = two_worker_search(tmp_path, "mw")
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'yours.db'}"  # untouched
    finally:
        mlflow.set_tracking_uri(before)  # the session's other tests read the global one
    assert result.ok and result.champion_uri == "models:/mw-model@champion"
    outcomes = result.trials["outcome"].tolist()
    assert sorted(outcomes) == ["completed", "pruned"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mw")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 2
    epochs = dict(zip(result.trials["trial_id"], result.trials["epochs"], strict=True))
    for child in children:
        assert child.data.params["workers"] == "2"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")]
        # One value per epoch the trial trained (a pruned trial's last epoch may come after
        # the stop was decided: it is logged too, once).
        assert sorted(steps) == list(range(1, len(steps) + 1))
        assert len(steps) >= epochs[child.data.tags["trial_id"]]
    parent = next(r for r in runs if r.data.tags.get("role") == "search")
    assert parent.data.params["resources.workers_per_trial"].startswith("2, Adam state sharded")

    # Every placement group is gone: Tune's per trial, and each Train run's workers'.
    table = ray.util.placement_group_table()
    worker_groups = [g for g in table.values() if len(g["bundles"]) == 2]
    assert len(worker_groups) >= 2
    assert {g["state"] for g in table.values()} == {"REMOVED"}

    # The champion's checkpoint (consolidated on rank 0) retrains as one process.
    best_yaml = tmp_path / "runs" / "mw" / "best.yaml"
    proc = subprocess.run([sys.executable, "-m", "search.train", str(best_yaml), "--set",
                           "train.epochs=1", "--out", str(tmp_path / "retrain")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "retrain" / "checkpoint.pt").is_file()


# ---------------------------------------------------------------- bad input, on the command line


@pytest.mark.parametrize("resources,optimizer,message", [
    ("{workers_per_trial: 64, cpus_per_worker: 1}", "{}",
     "resources.workers_per_trial 64: the cluster has room for"),
    ("{workers_per_trial: 2}", "{shard_state: true, state_dtype: int8}",
     "optimizer: shard_state supports state_dtype fp32 only, got int8"),
])
def test_unplaceable_or_unshardable_trials_are_refused_before_ray_starts(
        tmp_path, resources, optimizer, message):
    from tests.conftest import run_module

    (tmp_path / "conf.yaml").write_text(
        f"data: {{dataset: digits}}\nresources: {resources}\noptimizer: {optimizer}\n")
    proc = run_module("search.run", "conf.yaml", "--name", "bad", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "Started a local Ray" not in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
