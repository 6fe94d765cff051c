"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args...` as a user would, capturing its output."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def write_yaml(tmp_path):
    """Write a YAML text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "conf.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


# One real search of 8 trials with ASHA, shared by the tests that read what a finished
# search leaves behind (test_search.py) and by those that deploy its champion.
SEARCH = """
data: {dataset: digits, val_fraction: 0.2}
model: {name: cnn}
train: {epochs: 6, batch_size: 64}
search: {num_samples: 8, max_concurrent: 2, seed: 0, n_startup_trials: 3}
scheduler: {name: asha, grace_period: 1, reduction_factor: 3}
mlflow: {register_as: digits-test}
"""


@pytest.fixture(scope="session")
def search(tmp_path_factory):
    """(folder, stdout, MlflowClient) of the shared search `e2e`, run in `folder`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    cwd = tmp_path_factory.mktemp("search")
    (cwd / "conf.yaml").write_text(SEARCH)
    proc = run_module("search.run", "conf.yaml", "--name", "e2e", cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlflow.db'}")
    return cwd, proc.stdout, MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")


@pytest.fixture(scope="module")
def local_ray():
    """A Ray for this module's in-process runs, unless one is running already."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    yield
    if started:
        ray.shutdown()
