"""Real searches of a training task of the user's (conf/regression's diabetes.py, copied
beside each search's config): the guarantees of a built-in trial, for a task. Resumed after
its driver is killed, on a real `mlflow server`; warm processes; ASHA pruning on val_rmse;
the champion registered with the task's signature, retrained from best.yaml and deployed to
ONNX; a deterministic error in the task not retried; a lost node's trial retried from its
checkpoint with no epoch logged twice."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from bench import resume_fuzz
from bench.mlflow_server import MlflowServer
from tests.conftest import ROOT, run_module
from tests.test_reliability import wait_for
from tests.test_search import children

EPOCHS = 8
# batch_size 4: about 0.1 s an epoch, so the driver is killed with trials running.
CONFIG = f"""
train: {{task: diabetes:Diabetes, epochs: {EPOCHS}, batch_size: 4}}
model: {{name: diabetes:regressor, kwargs: {{hidden: 32}}}}
space:
  lr: {{low: 1.0e-4, high: 1.0e-2, log: true}}
  model.kwargs.hidden: {{choices: [16, 32]}}
search:
  metric: val_rmse
  mode: min
  num_samples: 6
  max_concurrent: 2
  seed: SEED
  points_to_evaluate: [{{lr: 3.0e-3}}]
scheduler: {{name: asha, grace_period: 2, reduction_factor: 2}}
mlflow: {{register_as: diabetes-task}}
"""


def with_task(folder):
    shutil.copy(ROOT / "conf" / "regression" / "diabetes.py", folder / "diabetes.py")
    return folder


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The search, killed once MLflow holds 10 epochs of val_rmse, then resumed."""
    server = MlflowServer(with_task(tmp_path_factory.mktemp("task")))
    try:
        what, out = resume_fuzz.kill_and_resume(server.folder, server, seed=1,
                                                point="epochs:10", config=CONFIG,
                                                metric="val_rmse")
        assert what == "killed", out[-2000:]
        yield server.folder, server, "s1-epochs10", out
    finally:
        server.stop()


def test_a_resumed_task_search_keeps_a_true_record_in_warm_processes(resumed):
    folder, server, name, out = resumed
    assert resume_fuzz.check(folder, server, name, epochs=EPOCHS, metric="val_rmse") == []
    rows = [json.loads(line) for f in (folder / "runs" / name).glob("trial_*/result.json")
            for line in f.read_text().splitlines() if line]
    trials = {r["trial_id"] for r in rows}
    # Warm processes: trials ran one after another in reused worker processes.
    assert len({r["pid"] for r in rows}) < len(trials) == 6
    assert "top 5 by val_rmse (min)" in out


def test_asha_prunes_on_the_tasks_metric_and_children_carry_it(resumed):
    folder, server, name, _ = resumed
    client = MlflowClient(server.uri)
    parents, kids = children(client, name)
    outcomes = [k.data.tags["outcome"] for k in kids]
    assert "pruned" in outcomes and "completed" in outcomes, outcomes
    assert parents[0].data.params["search.metric"] == "val_rmse (min)"
    assert parents[0].data.params["train.task"] == "diabetes:Diabetes"
    for kid in kids:
        epochs = int(kid.data.tags.get("epochs", 0)) or None
        rmse = client.get_metric_history(kid.info.run_id, "val_rmse")
        mae = client.get_metric_history(kid.info.run_id, "val_mae")
        steps = sorted(m.step for m in rmse)
        assert steps == list(range(1, len(steps) + 1)) and steps, steps
        assert sorted(m.step for m in mae) == steps
        assert epochs is None or epochs == len(steps)
        assert "patients_per_s" in kid.data.metrics


def test_the_champion_has_the_tasks_signature_retrains_and_deploys(resumed, tmp_path):
    folder, server, name, _ = resumed
    client = MlflowClient(server.uri)
    version = client.get_model_version_by_alias("diabetes-task", "champion")
    import mlflow

    mlflow.set_tracking_uri(server.uri)
    info = mlflow.models.get_model_info(f"models:/diabetes-task/{version.version}")
    inputs = info.signature.inputs.to_dict()
    assert list(inputs[0]["tensor-spec"]["shape"]) == [-1, 10], inputs
    assert inputs[0]["tensor-spec"]["dtype"] == "float32"
    assert version.tags["judged.metric"] == "val_rmse"
    assert version.tags["judged.data"].startswith("diabetes:Diabetes")

    run_dir = folder / "runs" / name
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["train"]["task"] == "diabetes:Diabetes"
    winner = float(version.tags["judged.value"])
    train = run_module("search.train", str(run_dir / "best.yaml"), "--out",
                       str(tmp_path / "retrain"), cwd=folder)
    assert train.returncode == 0, train.stderr[-2000:]
    retrained = float(re.findall(r"val_rmse (\d+\.\d+)", train.stdout)[-1])
    assert abs(retrained - winner) <= 0.05 * winner, (retrained, winner)

    deploy = run_module("search.deploy", str(run_dir), "--tracking-uri", server.uri,
                        "--out", str(tmp_path / "onnx"), "--set", "deploy.rounds=3",
                        "--set", "deploy.int8=true", cwd=folder)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    line = next(x for x in deploy.stdout.splitlines() if x.startswith("onnx: "))
    diff = float(re.search(r"max \|output diff\| (\S+) over (\d+) validation", line)[1])
    assert diff < 1e-3, line
    onnx_rmse, eager_rmse = map(float, re.search(
        r"val_rmse (\d+\.\d+) \(pytorch (\d+\.\d+)\)", line).groups())
    assert abs(onnx_rmse - eager_rmse) < 1e-3, line
    assert ("onnx-int8: refused: set deploy.max_metric_change to how much val_rmse may "
            "worsen") in deploy.stdout
    onnx = client.get_model_version_by_alias("diabetes-task-onnx", "champion")
    assert onnx.tags["task"] == "diabetes:Diabetes"


BREAKS = """
from diabetes import Diabetes, regressor  # noqa: F401


class Breaks(Diabetes):
    def batches(self, batch_size, epoch, generator):
        if epoch == 2:
            raise ValueError("the task's data ran out at epoch 2")
        return super().batches(batch_size, epoch, generator)
"""


def test_a_deterministic_error_in_a_task_is_not_retried_and_its_line_is_shown(tmp_path):
    with_task(tmp_path)
    (tmp_path / "breaks.py").write_text(BREAKS)
    (tmp_path / "conf.yaml").write_text(
        "train: {task: breaks:Breaks, epochs: 3, batch_size: 32}\n"
        "model: {name: diabetes:regressor}\n"
        "search: {metric: val_rmse, mode: min, num_samples: 2, max_concurrent: 1, "
        "max_failures: 2}\nscheduler: {name: fifo}\n")
    proc = run_module("search.run", "conf.yaml", "--name", "b", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 trials: 0 completed, 0 pruned, 0 diverged, 2 failed" in proc.stdout
    reason = "ValueError: the task's data ran out at epoch 2"
    assert proc.stdout.count(f"failed: {reason}") == 4  # as each ended, and in the summary
    _, kids = children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "b")
    assert len(kids) == 2
    for kid in kids:
        assert kid.data.tags["outcome"] == "failed" and kid.data.tags["error"] == reason
        assert "retries" not in kid.data.tags
    for result in (tmp_path / "runs" / "b").glob("trial_*/result.json"):
        lines = result.read_text().splitlines()  # epoch 1, then the error: run once
        assert len(lines) == 2 and json.loads(lines[-1])["error"] == reason


def on_node(node, pid: int) -> bool:
    """Whether process `pid` runs under `node`'s raylet (the nodes of a local Cluster share
    one IP address; a worker process is a child of its node's raylet)."""
    raylet = node.all_processes["raylet"][0].process.pid
    try:
        return any(p.pid == raylet for p in psutil.Process(pid).parents())
    except psutil.NoSuchProcess:
        return False


def remove_mid_trial(cluster: Cluster, node, exp_dir: Path, epochs: int,
                     driver: subprocess.Popen) -> str:
    """Remove `node` at once, when a trial running there has a checkpoint and two epochs or
    more to go (Ray writes result.json a little behind the trial): its retry must then
    resume from that checkpoint. Returns what was seen then, for failure messages."""
    seen = []

    def ready() -> bool:
        for trial in exp_dir.glob("trial_*"):
            lines = (trial / "result.json").read_text().splitlines() \
                if (trial / "result.json").exists() else []
            last = json.loads(lines[-1]) if lines else None
            if (last and last["training_iteration"] <= epochs - 2
                    and any(trial.glob("checkpoint_*")) and on_node(node, last["pid"])):
                seen.append(f"{trial.name} at epoch {last['training_iteration']}")
                return True
        return False
    wait_for(ready, 240, driver)
    cluster.remove_node(node, allow_graceful=False)
    return seen[0]


# batch_size 1 and a 1024-wide layer: a few seconds an epoch, so a node dies mid-trial.
SLOW = """
train: {task: diabetes:Diabetes, epochs: 4, batch_size: 1}
model: {name: diabetes:regressor, kwargs: {hidden: 1024, depth: 2}}
space: {eps: {value: 1.0e-8}}
search: {metric: val_rmse, mode: min, num_samples: 4, max_concurrent: 3, seed: 1,
         max_failures: 2}
scheduler: {name: fifo}
"""


def test_a_task_search_survives_losing_a_worker_node(tmp_path):
    with_task(tmp_path)
    (tmp_path / "conf.yaml").write_text(SLOW)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        driver = subprocess.Popen(
            [sys.executable, "-m", "search.run", "conf.yaml", "--name", "n",
             "--address", cluster.address],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        exp_dir = tmp_path / "runs" / "n"
        seen = remove_mid_trial(cluster, workers[0], exp_dir, 4, driver)
        out, _ = driver.communicate(timeout=420)
        assert driver.returncode == 0, out[-4000:]
    finally:
        cluster.shutdown()
    assert "search n: 4 trials: 4 completed" in out
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, kids = children(client, "n")
    assert len(kids) == 4
    for kid in kids:
        assert kid.info.status == "FINISHED" and kid.data.tags["outcome"] == "completed"
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "val_rmse")]
        assert sorted(steps) == [1, 2, 3, 4]  # exactly one value per epoch, replays or not
    assert len({k.data.tags["node_id"] for k in kids}) >= 2  # trials spread over nodes
    retried = [k for k in kids if int(k.data.tags.get("retries", 0)) >= 1]
    assert retried, f"no trial was retried after its node died ({seen})"
    assert any(int(k.data.tags.get("resumed_from_epoch", 0)) >= 1 for k in retried), seen
