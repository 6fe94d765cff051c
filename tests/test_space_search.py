"""A real search over a general space (categorical, int log, conditional keys, the model's
own width), its driver killed mid-search and resumed: the study, MLflow, best.yaml, the
retrain and the deployed champion all follow the searched paths."""

from __future__ import annotations

import re

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from bench import resume_fuzz
from bench.mlflow_server import MlflowServer
from tests.conftest import run_module

EPOCHS = 4
CONFIG = f"""
data: DATA
model: {{name: cnn}}
train: {{epochs: {EPOCHS}, batch_size: 64}}
space:
  beta1: {{value: 0.9}}
  one_minus_beta2: {{value: 1.0e-3}}
  train.schedule: {{choices: [constant, cosine, onecycle]}}
  train.warmup_fraction: {{low: 0.05, high: 0.3, when: {{train.schedule: onecycle}}}}
  train.batch_size: {{choices: [32, 64]}}
  model.kwargs.width: {{low: 8, high: 16, int: true, log: true}}
search:
  num_samples: 6
  max_concurrent: 2
  seed: SEED
  points_to_evaluate: [{{lr: 3.0e-3, train.schedule: onecycle, train.warmup_fraction: 0.1}}]
scheduler: {{name: asha, grace_period: 1, reduction_factor: 2}}
mlflow: {{register_as: space-cnn}}
"""
PATHS = ("train.schedule", "train.batch_size", "model.kwargs.width")


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The search, killed once MLflow holds 5 epochs, then resumed: (folder, server, name,
    the resumed driver's output)."""
    server = MlflowServer(tmp_path_factory.mktemp("space"))
    try:
        what, out = resume_fuzz.kill_and_resume(server.folder, server, seed=2,
                                                point="epochs:5", config=CONFIG)
        assert what == "killed", out[-2000:]
        yield server.folder, server, "s2-epochs5", out
    finally:
        server.stop()


def test_resumed_conditional_search_keeps_one_study_and_a_true_record(resumed):
    folder, server, name, out = resumed
    assert resume_fuzz.check(folder, server, name, epochs=EPOCHS) == []
    study = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "runs" / name /
                                                       "optuna.journal"))))
    # The same study, resumed: Ray's 6 trials are in it, each finished. (A trial the killed
    # driver finished after Ray's last snapshot stays in the study as it ended, while Ray
    # samples anew: README, "The Optuna study".)
    record = resume_fuzz.ray_record(folder / "runs" / name)
    by_ray = {t.user_attrs.get("ray_trial_id"): t for t in study.trials}
    assert len(record) == 6 and set(record) <= set(by_ray), (sorted(record), sorted(by_ray))
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert all(by_ray[r].state in ended for r in record)
    for t in study.trials:  # the conditional key exists exactly where its condition holds
        if t.state in ended:
            assert ("train.warmup_fraction" in t.params) == (t.params["train.schedule"]
                                                             == "onecycle"), t.params
            assert 8 <= t.params["model.kwargs.width"] <= 16
    assert study.trials[0].params["train.warmup_fraction"] == 0.1  # the point to evaluate


def test_child_runs_log_the_searched_paths(resumed):
    folder, server, name, _ = resumed
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    parent = next(r for r in runs if r.data.tags.get("role") == "search")
    assert len(kids) == 6
    for kid in kids:
        p = kid.data.params
        assert p["train.schedule"] in ("constant", "cosine", "onecycle")
        assert p["train.batch_size"] in ("32", "64")
        assert 8 <= int(p["model.kwargs.width"]) <= 16
        assert ("train.warmup_fraction" in p) == (p["train.schedule"] == "onecycle")
        assert f"schedule={p['train.schedule']}" in kid.info.run_name  # short names
    assert parent.data.params["space.train.schedule"] == "choice [constant, cosine, onecycle]"
    assert parent.data.params["space.model.kwargs.width"] == "int log-uniform [8, 16]"
    assert (parent.data.params["space.train.warmup_fraction"]
            == "uniform [0.05, 0.3] when train.schedule=onecycle")


def test_best_yaml_retrains_to_the_winner_and_its_searched_model_deploys(resumed, tmp_path):
    folder, server, name, _ = resumed
    run_dir = folder / "runs" / name
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(name)
    champ = client.search_runs([exp.experiment_id], "tags.champion = 'true'")[0]
    params = champ.data.params
    assert best["train"]["schedule"] == params["train.schedule"]
    assert best["train"]["batch_size"] == int(params["train.batch_size"])
    assert best["model"]["kwargs"]["width"] == int(params["model.kwargs.width"]) != 32
    if params["train.schedule"] == "onecycle":
        assert f"{best['train']['warmup_fraction']:.3g}" == params["train.warmup_fraction"]
    assert (run_dir / "plots" / "metric_vs_params.png").exists()

    train = run_module("search.train", str(run_dir / "best.yaml"), "--out",
                       str(tmp_path / "retrain"), cwd=folder)
    assert train.returncode == 0, train.stderr[-2000:]
    retrained = float(re.findall(r"val_acc (\d\.\d+)", train.stdout)[-1])
    winner = client.get_metric_history(champ.info.run_id, "val_acc")[-1].value
    assert abs(retrained - winner) <= 0.02, (retrained, winner)

    deploy = run_module("search.deploy", str(run_dir), "--tracking-uri", server.uri,
                        "--out", str(tmp_path / "onnx"), "--set", "deploy.rounds=3",
                        "--set", "deploy.compile=false", cwd=folder)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    agreement = float(re.search(r"top-1 agreement (\d\.\d+)", deploy.stdout).group(1))
    assert agreement >= 0.99, deploy.stdout
