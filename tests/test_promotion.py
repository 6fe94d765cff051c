"""A champion that only gets better (search/record/promotion.py): the registered version
records what it was judged on, and `@champion` moves only to a version at least as good on
the same metric and validation data, through real MLflow stores and real searches."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from mlflow.tracking import MlflowClient

from bench.mlflow_server import MlflowServer
from search.config import DataConfig
from search.record import promotion
from search.record.promotion import Judged, fingerprint, promote, verdict
from tests.conftest import ROOT

DIGITS = fingerprint(DataConfig(dataset="digits"))


def judged(value: float, data: str = DIGITS, metric: str = "val_acc",
           mode: str = "max") -> Judged:
    return Judged(metric, mode, value, data)


def test_the_verdict_moves_the_champion_only_to_an_equal_or_better_comparable_version():
    old = judged(0.9916)
    assert verdict(judged(0.9833), old, 3, "if_better") == (
        False, "kept champion v3 (0.9916) over this search's best (0.9833)")
    assert verdict(judged(0.9916), old, 3, "if_better")[0]  # at least as good
    assert verdict(judged(0.995), old, 3, "if_better")[0]
    assert verdict(judged(0.30, metric="val_loss", mode="min"),
                   judged(0.35, metric="val_loss", mode="min"), 1, "if_better")[0]
    moved, why = verdict(judged(0.999, data="digits split_seed=1 sha256:x"), old, 3,
                         "if_better")
    assert not moved and "other validation data" in why and "cannot be compared" in why
    moved, why = verdict(judged(0.999, metric="val_loss", mode="min"), old, 3, "if_better")
    assert not moved and "cannot be compared" in why
    assert not verdict(judged(0.999), None, 3, "if_better")[0]  # records nothing
    assert verdict(judged(0.1), None, None, "if_better") == (True, "no champion yet")
    assert verdict(judged(0.1), old, 3, "always")[0]
    assert not verdict(judged(1.0), old, 3, "never")[0]
    assert not verdict(judged(float("nan")), old, 3, "if_better")[0]


def test_the_fingerprint_follows_the_validation_data():
    assert fingerprint(DataConfig(dataset="digits")) == DIGITS  # the same data, the same print
    assert DIGITS.startswith("digits split_seed=0 sha256:")
    assert fingerprint(DataConfig(dataset="digits", split_seed=1)) != DIGITS
    assert fingerprint(DataConfig(dataset="digits", val_fraction=0.3)) != DIGITS
    assert Judged.of(judged(0.9).tags()) == judged(0.9)
    assert Judged.of({"judged.metric": "val_acc"}) is None


def versions(client: MlflowClient, name: str, n: int) -> list[int]:
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(f"e-{name}")).info.run_id
    return [int(client.create_model_version(name, f"runs:/{run}/model", run).version)
            for _ in range(n)]


def test_promotion_through_a_real_store(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    v = versions(client, "m", 6)
    assert promote(client, "m", v[0], judged(0.95), "if_better", settle_s=0) == (
        True, "no champion yet")
    assert promote(client, "m", v[1], judged(0.93), "if_better", settle_s=0) == (
        False, "kept champion v1 (0.9500) over this search's best (0.9300)")
    assert int(client.get_model_version_by_alias("m", "challenger").version) == v[1]
    assert promote(client, "m", v[2], judged(0.95), "if_better", settle_s=0)[0]
    assert not promote(client, "m", v[3], judged(0.99, data="other"), "if_better",
                       settle_s=0)[0]
    assert not promote(client, "m", v[4], judged(0.99), "never", settle_s=0)[0]
    assert int(client.get_model_version_by_alias("m", "champion").version) == v[2]
    assert promote(client, "m", v[5], judged(0.5), "always", settle_s=0)[0]
    assert int(client.get_model_version_by_alias("m", "champion").version) == v[5]
    tags = client.get_model_version("m", str(v[1])).tags
    assert Judged.of(tags) == judged(0.93)


def test_of_searches_ending_together_the_better_keeps_the_champion(tmp_path):
    # Eight searches' versions promoted at the same instant against one store, 5 rounds:
    # the alias ends on the best version every time.
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    for round_ in range(5):
        name = f"race{round_}"
        v = versions(client, name, 8)
        scores = [0.90 + 0.01 * ((i * 3 + round_) % 8) for i in range(8)]
        start = threading.Barrier(8)
        out: dict[int, bool] = {}

        def one(i: int, name: str = name, v: list[int] = v, scores: list[float] = scores,
                start: threading.Barrier = start, out: dict = out) -> None:
            start.wait()
            out[i] = promote(client, name, v[i], judged(scores[i]), "if_better",
                             settle_s=0.2)[0]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = max(range(8), key=lambda i: scores[i])
        assert int(client.get_model_version_by_alias(name, "champion").version) == v[best]


def search(cwd, name: str, server, epochs: int, address: str) -> subprocess.Popen:
    (cwd / f"{name}.yaml").write_text(
        "data: {dataset: digits}\nmodel: {name: mlp}\n"
        f"train: {{epochs: {epochs}, batch_size: 64}}\n"
        "search: {num_samples: 1, max_concurrent: 1, points_to_evaluate: []}\n"
        "space: {lr: {value: 3.0e-3}, beta1: {value: 0.9}, one_minus_beta2: {value: 1.0e-3},"
        " eps: {value: 1.0e-8}}\nscheduler: {name: fifo}\nmlflow: {register_as: shared}\n")
    return subprocess.Popen([sys.executable, "-m", "search.run", f"{name}.yaml", "--name", name,
                             "--tracking-uri", server.uri, "--address", address], cwd=cwd,
                            text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_two_searches_on_one_server_leave_the_better_one_champion(tmp_path, local_ray):
    import ray

    address = ray.get_runtime_context().gcs_address  # one Ray cluster, two drivers
    server = MlflowServer(tmp_path)
    try:
        # A champion judged on the same data at 0.92: between one epoch's val_acc (about
        # 0.90) and three epochs' (about 0.94), so the quick search must end challenger
        # whichever finishes first, and the full one champion.
        client = MlflowClient(server.uri)
        (seed,) = versions(client, "shared", 1)
        assert promote(client, "shared", seed, judged(0.92), "if_better", settle_s=0)[0]
        quick = search(tmp_path, "quick", server, 1, address)
        full = search(tmp_path, "full", server, 3, address)
        outs = {n: p.communicate(timeout=500)[0] for n, p in (("quick", quick), ("full", full))}
        assert quick.returncode == 0 and full.returncode == 0, outs
        scores = {int(v.version): Judged.of(v.tags) for v in client.search_model_versions(
            "name = 'shared'")}
        assert len(scores) == 3 and all(scores.values())
        assert scores[seed] == judged(0.92)
        champion = int(client.get_model_version_by_alias("shared", "champion").version)
        assert champion != seed and scores[champion].value > 0.92, outs
        assert scores[champion].value == max(j.value for j in scores.values())
        assert scores[champion].data == DIGITS
        assert "as @champion" in outs["full"], outs["full"]
        assert "as @challenger" in outs["quick"], outs["quick"]  # never champion, even briefly
        assert "over this search's best" in outs["quick"]
        assert "model: models:/shared@challenger" in outs["quick"]
    finally:
        server.stop()
    assert promotion.POLICIES == ("if_better", "always", "never")


def test_a_registration_sent_twice_ends_as_one_version(tmp_path, monkeypatch):
    """MLflow's client retries a POST whose answer was lost, so the server may make a
    version twice; register_once keeps the first and deletes the other."""
    import mlflow
    import torch

    from search.record import results

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run():
            logged = mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model",
                                              input_example=torch.zeros(1, 2).numpy())
        real = mlflow.register_model

        def retried(*args, **kwargs):  # the first answer lost: the client sends it again
            real(*args, **kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(mlflow, "register_model", retried)
        version = results.register_once(client, logged.model_uri, "m")
    finally:
        mlflow.set_tracking_uri(None)
    assert int(version.version) == 1
    assert [int(v.version) for v in client.search_model_versions("name = 'm'")] == [1]
