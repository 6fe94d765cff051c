"""Two-worker trials on a multi-node `ray.cluster_utils.Cluster`: the ranks of a trial on
different nodes, a node lost mid-trial, ASHA pruning, the champion, no placement group left.

Its own module: it connects this process to the cluster at the end (to read the placement
groups), which needs no other Ray connected here.
"""

from __future__ import annotations

import ray

CLUSTER_SEARCH = """
data: {dataset: digits}
model: {name: cnn}
train: {epochs: 3, batch_size: 8, device: cpu}  # small steps: epochs of a few seconds
search: {num_samples: 2, max_concurrent: 2, seed: 0, max_failures: 2,
         # A good first trial, then a slow learner: ASHA has something to prune.
         points_to_evaluate: [{lr: 0.003}, {lr: 0.0001}]}
scheduler: {name: asha, grace_period: 1, reduction_factor: 3}
resources: {workers_per_trial: 2, cpus_per_worker: 1}
mlflow: {register_as: cluster-model}
"""


def results_of(trial_dir) -> list[dict]:
    import json

    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_worker_trials_across_nodes_survive_losing_a_node(tmp_path):
    """Head without CPUs and three 1-CPU nodes: a trial's two ranks are on two nodes. Once
    a trial has a checkpoint, the node of its rank 0 is killed: Ray Train restarts the
    workers on the nodes left, from the checkpoint, and MLflow still has one value per
    epoch. Every trial ends, ASHA prunes, the champion is registered, no group is left."""
    import os
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    from tests.conftest import ROOT

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
        cluster.wait_for_nodes()
        (tmp_path / "conf.yaml").write_text(CLUSTER_SEARCH)
        driver = subprocess.Popen(
            [sys.executable, "-m", "search.run", "conf.yaml", "--name", "c",
             "--address", cluster.address],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        exp_dir = tmp_path / "runs" / "c"
        ray.init(address=cluster.address, logging_level="error")  # to watch the groups
        try:
            deadline = time.monotonic() + 300
            victim = None
            while victim is None:
                assert driver.poll() is None and time.monotonic() < deadline, "no checkpoint"
                # The first trial: ASHA has nothing to compare it with, so it runs all epochs.
                first = min(exp_dir.glob("train_*"), key=lambda d: d.stat().st_mtime,
                            default=None)
                if first is not None and list(first.glob("checkpoint_*")):
                    running = [g for g in ray.util.placement_group_table().values()
                               if len(g["bundles"]) == 2 and g["state"] == "CREATED"]
                    assert running, "the first trial ended before a node could be killed"
                    hosts = set(running[0]["bundles_to_node_id"].values())
                    assert len(hosts) == 2  # its two ranks on two nodes
                    victim = next(n for n in nodes if n.node_id in hosts)
                time.sleep(0.1)
            cluster.remove_node(victim, allow_graceful=False)
            out, _ = driver.communicate(timeout=900)
            assert driver.returncode == 0, out[-4000:]
            # The search has ended; Ray removes its groups a moment later (seconds on a
            # loaded machine): waited for, up to a deadline a loaded machine meets.
            deadline = time.monotonic() + 120
            while True:
                groups = ray.util.placement_group_table()
                if ({g["state"] for g in groups.values()} == {"REMOVED"}
                        or time.monotonic() > deadline):
                    break
                time.sleep(1)
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    worker_groups = [g for g in groups.values() if len(g["bundles"]) == 2]
    # One group per trial, and one more: the first trial's workers restarted after the loss.
    assert len(worker_groups) >= 3
    assert {g["state"] for g in groups.values()} == {"REMOVED"}  # none left holding CPUs

    summary = next(line for line in out.splitlines() if line.startswith("search c: 2 trials:"))
    assert "1 completed, 1 pruned, 0 diverged, 0 failed" in summary, summary
    assert "registered cluster-model version 1 as @champion" in out
    reports = {d.name.removeprefix("trial_"): results_of(d) for d in exp_dir.glob("trial_*")}
    assert all(r["worker_nodes"] == 2 for rs in reports.values() for r in rs)  # 2 nodes each
    # The first trial lost a rank's node and carried on, on the nodes left, to its last epoch.
    trial_id = first.name.removeprefix("train_")
    assert reports[trial_id][-1]["epoch"] == 3

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("c").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 2
    for child in children:
        assert child.data.params["workers"] == "2"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, len(steps) + 1))  # once each, replayed or not
