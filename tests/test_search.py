"""End-to-end: `python -m search.run` as a user runs it, on real Ray, Optuna and MLflow."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from bench import resume_fuzz
from bench.mlflow_server import SECRET, MlflowServer
from search import config as config_
from search.config import DataConfig, TrialConfig
from search.trial import data
from tests.conftest import KILLED_WITH_ITS_RAY, ROOT, SEARCH, run_module


def children(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "search"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return parents, kids


def test_every_trial_ends_and_asha_prunes_some(search):
    _, stdout, client = search
    _, kids = children(client, "e2e")
    outcomes = [k.data.tags.get("outcome") for k in kids]
    assert len(kids) == 8
    assert all(k.info.status == "FINISHED" for k in kids)
    assert set(outcomes) <= {"completed", "pruned", "diverged", "failed"}
    assert "pruned" in outcomes and "completed" in outcomes
    assert f"8 trials: {outcomes.count('completed')} completed, " \
           f"{outcomes.count('pruned')} pruned" in stdout


def test_output_is_a_line_per_trial_event_with_real_magnitudes(search):
    _, stdout, _ = search
    lines = stdout.splitlines()
    assert len(lines) <= 40, stdout
    assert not any(mark in stdout for mark in ("│", "╭", "tensorboard", "Trial status"))
    started = [line for line in lines if " started: " in line]
    ended = [line for line in lines
             if re.search(r" (completed \d+ epochs|pruned at epoch \d+): ", line)]
    assert len(started) == 8 and len(ended) == 8
    for line in started:  # eps is sampled in [1e-10, 1e-6]: it must keep its exponent
        assert re.search(r"eps=\d(\.\d+)?e-(0[6-9]|10)\b", line), line
        assert re.search(r"beta2=0\.9\d*", line), line  # not rounded to 1
    assert re.search(r"\[8/8 done, 0 running, best 0\.9\d+", stdout)


def test_mlflow_has_one_parent_with_a_child_per_trial_and_clean_histories(search):
    _, _, client = search
    parents, kids = children(client, "e2e")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["space.lr"] == "log-uniform [0.0001, 0.1]"
    assert parent.data.params["scheduler"] == "asha (grace 1, reduction 3)"
    assert "best_val_acc" in parent.data.metrics and "best.lr" in parent.data.params
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best.yaml", "top_trials.json", "config.yaml", "plots"} <= artifacts
    for kid in kids:
        assert kid.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert set(kid.data.params) == {"lr", "beta1", "beta2", "eps", "weight_decay",
                                        "workers"}
        assert kid.data.params["workers"] == "1"
        assert not {"pid", "timestamp", "done", "time_total_s"} & set(kid.data.metrics)
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, len(steps) + 1))  # one value per epoch
        expected = 6 if kid.data.tags["outcome"] == "completed" else len(steps)
        assert len(steps) == expected


def test_trials_run_in_warm_processes_one_per_concurrent_slot(search):
    # reuse_actors: the 8 trials share as many processes as run at once (2), each process
    # paying its imports and data loading once (search/trial/warm.py).
    cwd, _, _ = search
    pids = {}
    for result in (cwd / "runs" / "e2e").glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line]
        pids[rows[0]["trial_id"]] = {r["pid"] for r in rows}
    assert len(pids) == 8 and all(len(p) == 1 for p in pids.values())
    assert len(set.union(*pids.values())) <= 2


def test_champion_alias_loads_and_predicts(search):
    mlflow.set_tracking_uri(search[2].tracking_uri)  # the shared search's store
    model = mlflow.pytorch.load_model("models:/digits-test@champion")
    ds = data.load(DataConfig(dataset="digits", val_fraction=0.2))
    with torch.no_grad():
        logits = model(ds.val.x.float() / 255)
    accuracy = (logits.argmax(1) == ds.val.y).float().mean().item()
    assert accuracy > 0.9


def test_best_yaml_retrains_to_the_best_trials_accuracy(search, tmp_path):
    cwd, _, client = search
    best_yaml = cwd / "runs" / "e2e" / "best.yaml"
    cfg = config_.load(best_yaml, schema=TrialConfig)
    parents, kids = children(client, "e2e")
    best_id = parents[0].data.tags["best_trial_id"]
    best = next(k for k in kids if k.data.tags["trial_id"] == best_id)
    assert best.data.tags["outcome"] == "completed"
    assert float(best.data.params["lr"]) == pytest.approx(cfg.optimizer.lr, rel=5e-3)  # 3 digits
    proc = run_module("search.train", str(best_yaml), "--out", str(tmp_path / "out"), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    final = float(proc.stdout.strip().splitlines()[-1].split("val_acc ")[1].split(";")[0])
    assert final == pytest.approx(best.data.metrics["val_acc"], abs=0.02)


def ended_trials(exp_dir) -> list[str]:
    """Trials marked TERMINATED in Ray's newest saved experiment state."""
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    try:
        trials = json.loads(states[-1].read_text())["trial_data"] if states else []
    except (OSError, ValueError):  # being replaced right now
        return []
    return [t for t, _ in trials if json.loads(t)["status"] == "TERMINATED"]


@pytest.fixture
def server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (SQLite) in tmp_path."""
    server = MlflowServer(tmp_path)
    yield server
    server.stop()


def test_killed_driver_resumes_and_finishes_every_trial(tmp_path, server):
    """Killed between Ray's snapshots with trials running, tracked through a URI with a
    password: resumed, MLflow equals Ray's record (bench/resume_fuzz.py's check; its
    other kill points: tests/test_resume_fuzz.py), the study and ASHA's rungs came back,
    and the password is nowhere."""
    (tmp_path / "conf.yaml").write_text(SEARCH.replace("num_samples: 8", "num_samples: 5"))
    tracked = ["--tracking-uri", server.secret_uri]
    # Ray snapshots every second here (its default is every 10 s or more), so that the kill
    # lands mid-search, with checkpoints being deleted as snapshots supersede them.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "1",
           **KILLED_WITH_ITS_RAY}
    driver = subprocess.Popen(
        [sys.executable, "-m", "search.run", "conf.yaml", "--name", "k", *tracked],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    exp_dir = tmp_path / "runs" / "k"
    deadline = time.monotonic() + 180
    # Killed once Ray's saved state has a trial that ended (so ASHA's rungs hold a trial
    # that will not report again) and a checkpoint to resume from.
    while not (ended_trials(exp_dir) and list(exp_dir.glob("trial_*/checkpoint_*"))):
        assert driver.poll() is None, "search ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    proc = run_module("search.run", "conf.yaml", "--name", "k", "--resume", *tracked,
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "search k: 5 trials" in proc.stdout
    assert resume_fuzz.check(tmp_path, server, "k", epochs=6) == []
    assert SECRET not in proc.stdout + proc.stderr
    client = MlflowClient(server.uri)
    parents, kids = children(client, "k")
    assert len(parents) == 1 and len(kids) == 5
    assert len({k.data.tags["trial_id"] for k in kids}) == 5
    for kid in kids:
        assert kid.info.status == "FINISHED", proc.stdout[-5000:]
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "val_acc")]
        assert len(steps) == len(set(steps))
    # The Optuna study came back with the searcher: every trial told once, none lost.
    state_file = max(exp_dir.glob("searcher-state-*.pkl"))  # named by session start time
    study = pickle.loads(state_file.read_bytes())["_ot_study"]
    ids = {k.data.tags["trial_id"] for k in kids}
    trials = [t for t in study.trials if t.user_attrs.get("ray_trial_id") in ids]
    states = [t.state.name for t in trials]
    assert len(states) == 5 and set(states) <= {"COMPLETE", "PRUNED"}
    # Trials the killed driver asked for after its last snapshot, which Ray does not know:
    # told FAIL on resume if they had not finished, kept as they ended if they had (real
    # evaluations); none is left RUNNING.
    assert all(t.state.name != "RUNNING" for t in study.trials)
    sampled = [t.params["lr"] for t in trials]
    assert sorted(sampled) == pytest.approx(sorted(float(k.data.params["lr"]) for k in kids),
                                            rel=5e-3)
    # ASHA's rungs came back too (Ray itself rebuilds the scheduler empty): every trial,
    # those that ended before the kill included, is recorded at the first rung (epoch 1)
    # with its epoch-1 accuracy, not with a later epoch's. search.asha.RungState keeps them
    # in Ray's callback checkpoint.
    saved = max(exp_dir.glob("callback-states-*.pkl"))  # the resumed session's
    states = pickle.loads(saved.read_bytes()).values()
    rungs = next(state for state in states if state and "brackets" in state)["brackets"][0]
    first = dict(rungs)[1]
    for kid in kids:
        history = client.get_metric_history(kid.info.run_id, "val_acc")
        epoch_1 = next(m.value for m in history if m.step == 1)
        assert first[kid.data.tags["trial_id"]] == pytest.approx(epoch_1, abs=1e-9)


def test_seeded_search_samples_the_same_hyperparameters_twice(tmp_path):
    (tmp_path / "conf.yaml").write_text(
        SEARCH.replace("epochs: 6", "epochs: 1").replace("name: asha", "name: fifo")
        .replace("num_samples: 8, max_concurrent: 2", "num_samples: 4, max_concurrent: 1")
        .replace("grace_period: 1, ", "")
    )
    sampled = []
    for name, verbose in (("s1", []), ("s2", ["--verbose"])):
        proc = run_module("search.run", "conf.yaml", "--name", name, *verbose, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("Current time:" in proc.stdout + proc.stderr) == bool(verbose)  # Ray's view
        _, kids = children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), name)
        kids.sort(key=lambda r: r.info.start_time)
        sampled.append([dict(k.data.params) for k in kids])
    assert len(sampled[0]) == 4
    assert sampled[0] == sampled[1]
    assert len({p["lr"] for p in sampled[0]}) == 4  # and they are not all one point


def test_best_yaml_is_a_complete_single_run_config(search):
    cwd, _, _ = search
    raw = yaml.safe_load((cwd / "runs" / "e2e" / "best.yaml").read_text())
    assert set(raw) == {"data", "model", "optimizer", "train"}
