"""How a search ends, from Python (`run_search`): a failure marks the search's MLflow run
FAILED with its reason, and nothing of the search stays behind in the process: no tracker
thread, no registry entry, no environment variable."""

from __future__ import annotations

import os
import threading

import pytest
from mlflow.tracking import MlflowClient

from search.run import storage_path
from tests.test_search import children

CONF = """
data: {dataset: digits}
model: {name: mlp}
train: {epochs: 1}
search: {num_samples: 1, max_concurrent: 1}
scheduler: {name: fifo}
mlflow: {register_as: ended}
"""


@pytest.fixture
def in_folder(tmp_path, monkeypatch):
    """A search's folder with conf.yaml, as the working directory, MLflow's default store in
    it; `fail(module, name, message)` makes that function raise RuntimeError(message)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "conf.yaml").write_text(CONF)

    def fail(module, name: str, message: str) -> None:
        def broken(*args, **kwargs):
            raise RuntimeError(message)

        monkeypatch.setattr(module, name, broken)

    return fail


def test_a_failure_at_the_end_marks_the_search_failed_and_leaves_the_process_as_found(
        tmp_path, in_folder):
    from search import run_search
    from search.record import promotion, tracking

    # The champion's promotion fails (a failed registration is not a driver failure: it is
    # said and the search ends, below).
    in_folder(promotion, "promote", "the registry is down")
    before = dict(os.environ)
    writers = {t for t in threading.enumerate() if t.name == "mlflow-writer"}
    trackers = dict(tracking._open_trackers)  # other tests' searches, if any
    with pytest.raises(RuntimeError, match="the registry is down"):
        run_search("conf.yaml", name="x", show_progress=False)
    assert dict(os.environ) == before
    assert tracking._open_trackers == trackers  # this search's tracker left the registry
    assert {t for t in threading.enumerate() if t.name == "mlflow-writer"} <= writers
    parents, _ = children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "x")
    assert [p.info.status for p in parents] == ["FAILED"]
    assert parents[0].data.tags["error"] == "RuntimeError: the registry is down"


def test_a_champion_that_cannot_be_registered_is_said_and_the_search_still_ends(
        tmp_path, in_folder):
    from search import run_search
    from search.record import results

    in_folder(results, "register_champion", "the artifact store is full")
    result = run_search("conf.yaml", name="y", show_progress=False)
    assert result.ok and result.champion_uri is None
    assert result.unregistered == "RuntimeError: the artifact store is full"
    parents, _ = children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "y")
    assert [p.info.status for p in parents] == ["FINISHED"]  # every trial's record arrived


def test_one_storage_folder_is_spelled_one_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spellings = {storage_path(s) for s in ("runs", "./runs/", str(tmp_path / "runs"),
                                           "runs/../runs", None)}
    assert spellings == {str(tmp_path / "runs")}
    assert storage_path("s3://bucket/runs/") == "s3://bucket/runs"
