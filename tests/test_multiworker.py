"""Trials over several workers (search/distributed/): data-parallel parity with one worker,
ZeRO-sharded Adam state, consolidated checkpoints, placement and concurrency, and a real
search of two-worker trials on a local Ray, with ASHA pruning and a registered champion.

Every Ray Train run here is real: a TorchTrainer with gloo workers on this machine's Ray.
"""

from __future__ import annotations

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
from search.distributed.placement import concurrent_trials, worker_slots
from search.distributed.ranks import batch_part
from search.distributed.trial import torch_trainer
from search.trainable import load_checkpoint
from search.trainer import train

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
    ({"optimizer": {"shard_state": True}}, "needs resources.workers_per_trial > 1"),
    ({"train": {"batch_size": 100}, "resources": {"workers_per_trial": 3}},
     "train.batch_size 100 is not a multiple of resources.workers_per_trial 3"),
])
def test_config_refuses_what_cannot_be_sharded(raw, message):
    from search import config

    with pytest.raises(ConfigError, match=message):
        config.validate(SearchConfig, raw, "conf.yaml")


# ---------------------------------------------------------------- real Ray Train runs


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    yield
    if started:
        ray.shutdown()


def digits_mlp(epochs: int, **optimizer) -> TrialConfig:
    # No dropout, no batch norm: a rank's forward on its part of a batch is exactly what a
    # single process computes on those rows.
    return TrialConfig(data=DataConfig(dataset="digits"), model=ModelConfig(name="mlp"),
                       optimizer=OptimizerConfig(lr=3e-3, **optimizer),
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


# Parity tolerance. DDP sums the two ranks' gradients and halves them; one process sums all
# 64 rows at once: the same numbers added in another order, so each gradient differs by a
# few fp32 ulps. Adam divides by sqrt(v) + eps, which turns such a difference in a weight
# whose gradient is near zero into a step-sized one, and training compounds it; so the
# check is per tensor, on the relative L2 distance. Measured on digits (mlp, lr 3e-3):
# at most 5.9e-5 after 3 epochs (largest single weight 2.3e-4 off), 5.2e-4 after a 4th epoch
# continued on one worker. The bugs this guards against are 400x and more away: training
# on half the batch (a rank ignoring the other's gradient) puts the weights 0.14-0.38 away
# after 3 epochs, summing the gradients instead of averaging them (twice the step) 0.23-0.48.
PARITY = 1e-3


def assert_same_weights(got: dict, expected: dict, tolerance: float = PARITY) -> None:
    for name, weight in expected.items():
        distance = float((got[name] - weight).norm() / weight.norm())
        assert distance < tolerance, f"{name}: relative L2 distance {distance:.2e}"


def test_two_workers_take_the_same_steps_as_one(local_ray, tmp_path):
    cfg = digits_mlp(epochs=3)
    single = one_process(cfg)
    metrics, double = ray_train(cfg, tmp_path, "parity")
    assert metrics["workers"] == 2 and metrics["epoch"] == 3
    assert_same_weights(double["model"], single["model"])
    # Metrics are the whole group's: validation over both ranks' parts equals one process's.
    assert metrics["val_acc"] == pytest.approx(single["metrics"]["val_acc"], abs=1 / 360)

    # The two-worker checkpoint is an ordinary one: a one-worker trial continues from it.
    longer = digits_mlp(epochs=4)
    resumed = one_process(longer, resume=double)
    straight = one_process(longer)
    assert resumed["epoch"] == 4
    assert_same_weights(resumed["model"], straight["model"], 3 * PARITY)


def test_zero_shards_adam_state_and_consolidates_it(local_ray, tmp_path):
    # resnet18's tensors split evenly over two ranks (ZeRO-1 assigns whole tensors).
    cfg = TrialConfig(
        data=DataConfig(dataset="synthetic", synthetic_samples=160,
                        synthetic_shape=(1, 8, 8)),
        model=ModelConfig(name="resnet18"), optimizer=OptimizerConfig(lr=1e-3),
        train=TrainConfig(epochs=2, batch_size=32, device="cpu"))
    sharded_cfg = cfg.model_copy(update={"optimizer": OptimizerConfig(lr=1e-3,
                                                                      shard_state=True)})
    plain_metrics, plain = ray_train(cfg, tmp_path, "plain")
    sharded_metrics, sharded = ray_train(sharded_cfg, tmp_path, "sharded")

    net = models.build("resnet18", 10, 1, 8)
    params = sum(p.numel() for p in net.parameters())
    whole = plain_metrics["state_bytes_per_rank"]
    halves = sharded_metrics["state_bytes_per_rank"]
    assert whole == [8 * params, 8 * params]  # exp_avg and exp_avg_sq, fp32, on every rank
    assert sum(halves) == 8 * params
    assert max(halves) <= 0.51 * 8 * params  # each rank about half

    # The same steps: ZeRO changes where the state lives, not the update.
    for name, weight in plain["model"].items():
        torch.testing.assert_close(sharded["model"][name], weight)

    # The consolidated state is a plain optim.Adam state dict, equal to the unsharded one.
    adam = optim.Adam(net.parameters(), lr=1e-3)
    adam.load_state_dict(sharded["optimizer"])
    expected = plain["optimizer"]["state"]
    assert len(adam.state) == len(expected) == len(list(net.parameters()))
    for i, p in enumerate(net.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(adam.state[p][key], expected[i][key])
