"""A multi-worker trial: a Tune function trainable that runs a Ray Train `TorchTrainer`.

Tune calls `run_trial` as it calls the single-process `search.trial.trainable.run_trial`, with the
trial's sample; here the trial only drives: it starts `workers_per_trial` Ray Train workers
(backend gloo on CPU, nccl on CUDA), each running `worker_loop`, which is the project's
trainer with `search.trial.distributed.ranks.Ranks` as its `parallel`. Rank 0's reports reach Tune
through Ray's `TuneReportCallback`, with the path of the run's latest checkpoint, which
rank 0 writes (model and the consolidated optimizer state: a plain `optim.Adam` state dict).

Failures: Ray Train restarts a lost worker group from its latest checkpoint, up to
`search.max_failures` times; a new driver for the same trial (Tune's retry, `--resume`)
finds the same Train run in the search's storage and continues from it too. Epochs replayed
after a restart are logged to MLflow once (search/record/tracking.py). An ASHA stop ends the trial
actor; its Train controller, workers and their placement group go with it.
"""

from __future__ import annotations

import time
from typing import Any

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from search.config import TrialConfig
from search.space import trial_config
from search.trial import warm
from search.trial.checkpoints import CheckpointPolicy
from search.trial.distributed.placement import PLACEMENT_GROUP
from search.trial.distributed.ranks import Ranks
from search.trial.trainable import (
    CHECKPOINT_URI,
    DETERMINISTIC,
    error_result,
    load_checkpoint,
    report_checkpoint,
    with_metric,
)
from search.trial.trainer import pick_device, train

# What a multi-worker trial's driver asks Tune for: no CPU (it only waits on its workers,
# which Ray Train places in a placement group of their own), and a token of memory because
# a Ray resource request cannot be empty. Charging it a CPU could deadlock a search whose
# workers need every CPU of the cluster.
DRIVER_RESOURCES = {"cpu": 0, "memory": 2**20}


class ReportToTune(TuneReportCallback):
    """Ray's TuneReportCallback (rank 0's metrics to Tune), with the URI of the run's latest
    checkpoint on every result, not only on the one that wrote it: a trial's last result
    then names the checkpoint its champion is loaded from."""

    def __init__(self, storage: str) -> None:
        super().__init__()
        self.scheme = storage.split("://")[0] + "://" if "://" in storage else ""
        self.latest: str | None = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if checkpoint is not None:
            self.latest = self.scheme + checkpoint.path
        first = dict(metrics[0])
        if self.latest:
            first[CHECKPOINT_URI] = self.latest
        super().after_report(run_context, [first], None)


class RankReporter:
    """Each epoch's metrics to Ray Train from every rank; rank 0 writes the checkpoint."""

    def __init__(self, policy: CheckpointPolicy, rank: int, extra: dict[str, Any],
                 metric: str = "val_acc") -> None:
        self.policy = policy
        self.metric = metric
        self.rank = rank
        self.extra = extra
        self.last_epoch = 0

    def due(self, epoch: int) -> bool:
        """Rank 0's checkpoint rule (ASHA rungs, last epoch, the adaptive period)."""
        return self.policy.due(epoch, time.perf_counter())

    def __call__(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        self.last_epoch = metrics["epoch"]
        metrics = {**with_metric(metrics, self.metric), **self.extra}
        if checkpoint is None or self.rank != 0:
            ray.train.report(metrics)
            return
        start = time.perf_counter()
        report_checkpoint(ray.train.report, ray.train.Checkpoint, metrics, checkpoint)
        end = time.perf_counter()
        self.policy.written(end, end - start)


def worker_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: its rank's share of the trial's training."""
    import torch.distributed as dist

    cfg = TrialConfig.model_validate(config["trial"])
    warm.quiet_train_logs()  # also in processes that Ray started without our setup hook
    warm.use_assigned_cpus(config["cpus_per_worker"])
    device = (ray.train.torch.get_device() if config["use_gpu"]
              else pick_device("cpu"))
    nodes: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    policy = CheckpointPolicy(cfg.train.epochs, tuple(config["rungs"]),
                              config["checkpoint_period_s"])
    group = ray.util.get_current_placement_group()
    report = RankReporter(policy, dist.get_rank(), {
        "node_id": nodes[0], "workers": len(nodes), "worker_nodes": len(set(nodes)),
        PLACEMENT_GROUP: group.id.hex() if group else ""}, config["metric"])
    checkpoint = ray.train.get_checkpoint()
    resume = load_checkpoint(checkpoint) if checkpoint else None
    try:
        train(cfg, report, resume=resume, task=warm.task(cfg, device),
              parallel=Ranks(device, cfg.optimizer.shard_state, report.due))
    except DETERMINISTIC as e:
        # Every rank meets the same bad input; retrying would meet it again.
        ray.train.report(error_result(report.last_epoch, e, config["metric"]))
    finally:
        warm.release(compiled=cfg.train.compile or bool(cfg.optimizer.fused))


def torch_trainer(cfg: TrialConfig, *, workers: int, worker: dict[str, float], storage: str,
                  name: str, rungs: tuple[int, ...] = (), checkpoint_period_s: float | None = None,
                  max_failures: int = 0, callbacks: list = (),
                  metric: str = "val_acc") -> TorchTrainer:
    """The Ray Train run of one configuration: `workers` workers with `worker` resources
    each ({"CPU": .., "GPU": ..}), kept as `storage/name` (a rerun with the same name
    continues from its latest checkpoint)."""
    use_gpu = worker["GPU"] > 0
    return TorchTrainer(
        worker_loop,
        train_loop_config={"trial": cfg.model_dump(mode="json"), "rungs": list(rungs),
                           "checkpoint_period_s": checkpoint_period_s,
                           "cpus_per_worker": worker["CPU"], "use_gpu": use_gpu,
                           "metric": metric},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu,
            resources_per_worker={k: v for k, v in worker.items() if v}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            # Ray Train logs every report and worker-group start: the search prints progress.
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )


def run_trial(params: dict[str, Any], base: TrialConfig, rungs: tuple[int, ...] = (),
              checkpoint_period_s: float | None = None, *, workers: int,
              worker: dict[str, float], storage: str, max_failures: int,
              metric: str = "val_acc") -> None:
    """Tune's trial: train the sample on `workers` Ray Train workers, each with `worker`
    resources, the Train run kept under `storage` (the search's folder or URI)."""
    trainer = torch_trainer(
        trial_config(base, params), workers=workers, worker=worker, storage=storage,
        name=f"train_{tune.get_context().get_trial_id()}", rungs=rungs,
        checkpoint_period_s=checkpoint_period_s, max_failures=max_failures,
        callbacks=[ReportToTune(storage)], metric=metric)
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as e:
        # Ray Train has spent the trial's retries: the trial failed, with the reason.
        tune.report(error_result(0, e, metric))
