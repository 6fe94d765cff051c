"""search/record/sqlite_schema.py: a new SQLite store copied from an empty one, as MLflow
would have made it."""

from __future__ import annotations

import os
from pathlib import Path

from mlflow import MlflowClient

from search.record import sqlite_schema


def test_a_new_store_is_a_copy_that_mlflow_opens_and_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "new" / "mlflow.db"
    sqlite_schema.prepare(f"sqlite:///{db}")
    assert db.is_file() and sqlite_schema.template_path().is_file()
    assert sqlite_schema.template_path().parent == tmp_path / "cache" / "adamsearch"
    client = MlflowClient(f"sqlite:///{db}")  # MLflow checks the schema revision here
    experiment = client.create_experiment("e")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "val_acc", 0.5, step=1)
    assert client.get_metric_history(run.info.run_id, "val_acc")[0].value == 0.5
    # MLflow made its Default experiment in the copy, with this store's own artifact root,
    # not the template's folder.
    default = client.get_experiment("0")
    assert default.name == "Default"
    assert "cache" not in default.artifact_location
    assert [f for f in os.listdir(db.parent) if f != "mlflow.db"] == []  # no temp file left


def test_an_existing_store_and_a_server_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not touched")
    sqlite_schema.prepare(f"sqlite:///{db}")
    assert db.read_bytes() == b"not touched"
    sqlite_schema.prepare("http://127.0.0.1:1")
    assert not (tmp_path / "cache").exists()


def test_a_store_that_cannot_be_copied_is_left_to_mlflow(tmp_path, monkeypatch):
    # The template cannot be written (its folder is a file): no store and no error; MLflow
    # creates and migrates the database itself when it opens it.
    (tmp_path / "cache").write_text("a file")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    db = Path(tmp_path / "mlflow.db")
    sqlite_schema.prepare(f"sqlite:///{db}")
    assert not db.exists()
    MlflowClient(f"sqlite:///{db}").search_experiments()
    assert db.is_file()
