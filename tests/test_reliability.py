"""Reliability against real parts: an MLflow server restarting mid-search, trials that fail
or diverge, a database password kept out of storage. (A worker node lost mid-trial:
tests/test_task_search.py and tests/test_multiworker_cluster.py.)"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.mlflow_server import MlflowServer, free_port
from tests.conftest import ROOT, run_module
from tests.test_search import children

# Long enough (about 15 s of training on 2 cores) that trials keep reporting through the
# tracking server's 8 s outage.
DIGITS = """
data: {dataset: digits}
model: {name: cnn}
train: {epochs: 30, batch_size: 64}
search: {num_samples: 6, max_concurrent: 2, seed: 2}
scheduler: {name: fifo}
mlflow: {register_as: digits-http}
"""


def ray_epochs(exp_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per trial id, the (epoch, val_acc) pairs Ray itself recorded."""
    out = {}
    for result in exp_dir.glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line]
        out[rows[0]["trial_id"]] = sorted({(r["epoch"], r["val_acc"]) for r in rows})
    return out


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.returncode}")
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.5)

def postgres_binaries() -> Path | None:
    """The newest PostgreSQL server binaries Debian installed (`.ci/run` installs them)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1].parent if found else None


@pytest.fixture
def postgres(tmp_path):
    """A real PostgreSQL server on 127.0.0.1 and a free port, its own cluster in tmp_path;
    yields a SQLAlchemy URI of an empty database for MLflow."""
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    port = free_port()
    # Outside pytest's folders, which only their owner may enter: the server refuses to run
    # as root, so as root (CI) it runs as Debian's postgres user.
    data = Path(tempfile.mkdtemp(prefix="adamsearch-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres")
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True,  # noqa: E731
                                      text=True, timeout=120)
    run(str(binaries / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
        "--no-sync")
    run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w",
        "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            "mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def mlflow_server(request, tmp_path):
    """A real `mlflow server` on 127.0.0.1 over SQLite or PostgreSQL; yields (uri, start,
    stop)."""
    backend = None if request.param == "sqlite" else request.getfixturevalue("postgres")
    server = MlflowServer(tmp_path, backend)
    yield server.uri, server.start, server.stop
    server.stop()


def test_search_survives_tracking_server_restart(tmp_path, mlflow_server):
    uri, start, stop = mlflow_server
    # Credentials in the URI (the server ignores them) must never be printed or logged.
    secret_uri = uri.replace("http://", "http://alice:s3cret@")
    (tmp_path / "conf.yaml").write_text(DIGITS)
    driver = subprocess.Popen(
        [sys.executable, "-m", "search.run", "conf.yaml", "--name", "h",
         "--tracking-uri", secret_uri],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    exp_dir = tmp_path / "runs" / "h"
    wait_for(lambda: len(list(exp_dir.glob("trial_*/checkpoint_*"))) >= 1, 180, driver)
    stop()
    time.sleep(8)  # trials keep reporting while the server is down
    start()
    out, _ = driver.communicate(timeout=420)
    assert driver.returncode == 0, out[-4000:]
    assert "MLflow unreachable" in out  # writes did fail while it was down, and were queued
    client = MlflowClient(uri)
    parents, kids = children(client, "h")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    expected = ray_epochs(exp_dir)
    assert len(kids) == len(expected) == 6
    for kid in kids:
        history = client.get_metric_history(kid.info.run_id, "val_acc")
        got = sorted((m.step, m.value) for m in history)
        assert got == expected[kid.data.tags["trial_id"]]
    version = client.get_model_version_by_alias("digits-http", "champion")
    assert version.run_id in {k.info.run_id for k in kids}
    assert "s3cret" not in out
    assert "s3cret" not in (exp_dir / "search.yaml").read_text()
    # Nor in anything Ray pickled into the storage (tuner.pkl holds the callbacks).
    leaked = [str(f) for f in exp_dir.rglob("*") if f.is_file() and b"s3cret" in f.read_bytes()]
    assert leaked == []
    for run in [*parents, *kids]:
        assert not any("s3cret" in v for v in run.data.params.values())
        assert not any("s3cret" in v for v in run.data.tags.values())
    logged = Path(client.download_artifacts(parents[0].info.run_id, "config.yaml", tmp_path))
    assert "s3cret" not in logged.read_text()
    assert "tracking_uri: http://***@127.0.0.1" in logged.read_text()


def test_a_diverging_trial_is_marked_and_the_search_finishes(tmp_path):
    # One textbook point that trains, one that diverges (lr 1e12): the divergence may not
    # stop the search.
    (tmp_path / "conf.yaml").write_text("""
data: {dataset: digits}
model: {name: mlp}
train: {epochs: 2, batch_size: 64}
space: {lr: {low: 1.0e-4, high: 1.0e+13, log: true}}
search:
  num_samples: 2
  max_concurrent: 1
  max_failures: 0
  points_to_evaluate: [{lr: 1.0e-3}, {lr: 1.0e+12}]
scheduler: {name: fifo}
""")
    proc = run_module("search.run", "conf.yaml", "--name", "f", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 trials: 1 completed, 0 pruned, 1 diverged, 0 failed" in proc.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, kids = children(client, "f")
    assert sorted(k.data.tags["outcome"] for k in kids) == ["completed", "diverged"]


def test_a_deterministic_trial_error_is_not_retried_and_its_reason_is_shown(tmp_path):
    # CIFAR-10's files are there (so the driver's check passes) but corrupt: every trial
    # fails the same way, which a retry would meet again. None is retried although
    # max_failures allows 2; each says why, in the output and on its MLflow run.
    batches = tmp_path / "data" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (batches / name).write_bytes(b"not a pickle")
    (tmp_path / "conf.yaml").write_text("""
data: {dataset: cifar10, root: data}
model: {name: mlp}
train: {epochs: 2}
search: {num_samples: 2, max_concurrent: 1, max_failures: 2}
scheduler: {name: fifo}
""")
    proc = run_module("search.run", "conf.yaml", "--name", "g", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # no model
    assert "2 trials: 0 completed, 0 pruned, 0 diverged, 2 failed" in proc.stdout
    reason = "DatasetMissing: data.dataset 'cifar10' not found under"
    assert proc.stdout.count(f"failed: {reason}") == 4  # as each ended, and in the summary
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, kids = children(client, "g")
    assert [p.info.status for p in parents] == ["FAILED"]  # not left RUNNING
    assert parents[0].data.tags["failed_trials"] == "2"
    assert len(kids) == 2
    for kid in kids:
        assert kid.info.status == "FAILED" and kid.data.tags["outcome"] == "failed"
        assert kid.data.tags["error"].startswith(reason)
        assert "retries" not in kid.data.tags  # run once, not retried
    # Ray saw each trial run once: one result, no failure recorded.
    for result in (tmp_path / "runs" / "g").glob("trial_*/result.json"):
        assert len(result.read_text().splitlines()) == 1
    # Optuna was told these trials failed.
    state = max((tmp_path / "runs" / "g").glob("searcher-state-*.pkl"))
    study = pickle.loads(state.read_bytes())["_ot_study"]
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]


def test_no_database_password_is_stored_and_resume_asks_for_it(tmp_path, postgres):
    # The Optuna study in PostgreSQL, through a URL with a password (the trust-auth test
    # server ignores it): Ray pickles the searcher, and its storage, into the search folder.
    url = postgres.replace("postgres@", "postgres:s3cret@")
    (tmp_path / "conf.yaml").write_text("""
data: {dataset: digits}
model: {name: mlp}
train: {epochs: 1}
search: {num_samples: 2, max_concurrent: 1}
scheduler: {name: fifo}
""")
    first = run_module("search.run", "conf.yaml", "--name", "p",
                       "--set", f"search.optuna_storage={url}", cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    def leaked() -> list[str]:
        return [str(f) for f in (tmp_path / "runs").rglob("*")
                if f.is_file() and b"s3cret" in f.read_bytes()]

    assert leaked() == [] and b"s3cret" not in (tmp_path / "mlflow.db").read_bytes()
    asked = run_module("search.run", "conf.yaml", "--name", "p", "--resume", cwd=tmp_path)
    assert asked.returncode == 2
    assert "pass --set search.optuna_storage=URL again" in asked.stderr
    again = run_module("search.run", "conf.yaml", "--name", "p", "--resume",
                       "--set", f"search.optuna_storage={url}", cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "search p: 2 trials: 2 completed" in again.stdout
    assert leaked() == [] and "s3cret" not in again.stdout + again.stderr
