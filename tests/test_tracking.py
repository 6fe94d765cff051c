"""The MLflow writer (search/record/tracking.py) against a real SQLite-backed MLflow store."""

from __future__ import annotations

import logging

import pytest
from mlflow.tracking import MlflowClient

from search.record.tracking import RETRY_S, Tracker, transient


@pytest.fixture
def tracker(tmp_path):
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", str(tmp_path / "s"), "s",
                {"train.epochs": "3"})
    t.start()
    assert t.drain(timeout_s=60)
    yield t
    t.close(timeout_s=5)


def history(t: Tracker, trial_id: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in t.client.get_metric_history(t.children[trial_id], "val_acc")]


def test_epochs_queued_together_go_out_as_one_batch_per_trial_in_order(tracker):
    calls = []
    real = tracker.client.log_batch

    def counting(run_id, **kw):
        calls.append(run_id)
        return real(run_id, **kw)

    for trial in ("a", "b", "c"):
        tracker.start_trial(trial, trial, {"lr": 0.1})
    assert tracker.drain(timeout_s=30)
    tracker.client.log_batch = counting
    with tracker._cv:  # hold the writer: everything below is queued before it looks again
        for epoch in range(1, 51):
            for trial in ("a", "b", "c"):
                if epoch == 1:
                    tracker.tag_trial(trial, "node_id", "n1")
                tracker.log_epoch(trial, {"epoch": epoch, "val_acc": epoch / 100, "pid": 1})
    assert tracker.drain(timeout_s=30)
    for trial in ("a", "b", "c"):
        assert history(tracker, trial) == [(e, e / 100) for e in range(1, 51)]
    assert len(calls) == 3  # one log_batch per trial, tags included, not one per epoch
    run = tracker.client.get_run(tracker.children["a"])
    assert set(run.data.metrics) == {"val_acc"}  # only the tracked metrics, no pid
    assert run.data.tags["node_id"] == "n1"


def test_a_replayed_epoch_is_logged_once(tracker):
    tracker.start_trial("a", "a", {"lr": 0.1})
    for epoch in (1, 2, 3, 2, 3, 4):  # a retry from the epoch-1 checkpoint replays 2 and 3
        tracker.log_epoch("a", {"epoch": epoch, "val_acc": epoch / 10})
    assert tracker.drain(timeout_s=30)
    assert [s for s, _ in history(tracker, "a")] == [1, 2, 3, 4]


def test_a_write_that_would_fail_again_is_dropped_without_blocking_the_rest(tracker, caplog):
    tracker.start_trial("a", "a", {"lr": 0.1})

    def broken() -> None:
        raise KeyError("no such trial")

    tracker.submit(broken)
    tracker.log_epoch("a", {"epoch": 1, "val_acc": 0.5})
    with caplog.at_level(logging.ERROR, logger="search.record.tracking"):
        assert tracker.drain(timeout_s=30)
    assert history(tracker, "a") == [(1, 0.5)]
    assert "MLflow write dropped: KeyError" in caplog.text


def test_a_server_outage_is_retried_and_a_half_made_run_is_not_made_twice(tracker, caplog):
    # The server creates the run, then the connection breaks before the answer arrives.
    real = tracker.client.create_run
    failures = []

    def flaky(*args, **kwargs):
        run = real(*args, **kwargs)
        if not failures:
            failures.append(1)
            raise ConnectionError("connection reset by peer")
        return run

    tracker.client.create_run = flaky
    with caplog.at_level(logging.WARNING, logger="search.record.tracking"):
        tracker.start_trial("a", "a", {"lr": 0.1})
        tracker.log_epoch("a", {"epoch": 1, "val_acc": 0.5})
        assert tracker.drain(timeout_s=RETRY_S + 30)
    assert "MLflow unreachable" in caplog.text
    kids = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = "
                                               f"'{tracker.parent_run_id}'")
    assert len(kids) == 1 and history(tracker, "a") == [(1, 0.5)]
    assert kids[0].data.params == {"lr": "0.1"}


def test_only_connection_and_server_errors_count_as_transient():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    assert transient(ConnectionError("refused")) and transient(OSError("reset"))
    assert transient(MlflowException("API request failed with exception ..."))  # 500
    assert not transient(MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE))
    assert not transient(KeyError("x"))


def test_nothing_is_written_before_start(tmp_path):
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", "s", "s", {})
    assert not t.drain(timeout_s=2)  # the open waits for start()
    assert not (tmp_path / "mlflow.db").exists()
    t.start()
    assert t.drain(timeout_s=60)
    assert MlflowClient(t.tracking_uri).get_experiment_by_name("exp") is not None


def test_the_schemes_we_accept_are_the_ones_mlflow_has_stores_for():
    # Private registries of MLflow (named here so a release that moves them fails loudly).
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from search.record.tracking import REGISTRY_SCHEMES, TRACKING_SCHEMES

    tracking = tracking_utils._tracking_store_registry._registry
    registry = registry_utils._get_store_registry()._registry
    assert set(TRACKING_SCHEMES) <= set(tracking), set(TRACKING_SCHEMES) - set(tracking)
    assert set(REGISTRY_SCHEMES) <= set(registry), set(REGISTRY_SCHEMES) - set(registry)


def test_a_uri_scheme_mlflow_cannot_use_is_refused_naming_it():
    from search.config import ConfigError
    from search.record.tracking import check_tracking_uri

    for uri, scheme in (("ftp://127.0.0.1/x", "ftp"), ("s3://bucket/mlflow", "s3"),
                        ("redis://127.0.0.1:6379", "redis")):
        with pytest.raises(ConfigError, match=f"no tracking store for scheme '{scheme}'"):
            check_tracking_uri(uri, register=False)
    check_tracking_uri("sqlite:////tmp/x.db", register=True)
    check_tracking_uri("postgresql+psycopg2://u@127.0.0.1:1/db", register=True)


def test_the_pickled_tracking_callback_holds_no_credentials():
    # Ray pickles its callbacks into the search's storage (tuner.pkl).
    import pickle

    from search.record.tracking import TrackingCallback

    callback = TrackingCallback("http://alice:s3cret@127.0.0.1:5000", "e", "/runs/x", "x", {}, 3)
    saved = pickle.dumps(callback)
    assert b"s3cret" not in saved
    assert pickle.loads(saved).tracking_uri == "http://***@127.0.0.1:5000"
    assert callback.tracking_uri.startswith("http://alice:s3cret@")  # the live one keeps it


# ---------------------------------------------------------------- issue 25: a tracker that
# fails loudly, never blocks, and sends each point once


def all_steps(t: Tracker, trial_id: str, key: str = "val_acc") -> list[int]:
    return sorted(m.step for m in t.client.get_metric_history(t.children[trial_id], key))


def test_two_updates_of_one_epoch_in_one_batch_go_out_once(tracker):
    tracker.start_trial("a", "a", {"lr": 0.1})
    assert tracker.drain(timeout_s=30)
    with tracker._cv:  # both queued before the writer looks: one batch
        tracker.log_epoch("a", {"epoch": 1, "val_acc": 0.5})
        tracker.log_epoch("a", {"epoch": 1, "val_acc": 0.6})  # a replay of epoch 1
    assert tracker.drain(timeout_s=30)
    assert history(tracker, "a") == [(1, 0.5)]


def test_a_failed_chunk_does_not_send_the_delivered_ones_again(tracker):
    tracker.start_trial("a", "a", {"lr": 0.1})
    assert tracker.drain(timeout_s=30)
    real, calls = tracker.client.log_batch, []

    def second_fails_once(run_id, **kw):
        calls.append(len(kw.get("metrics", [])))
        if len(calls) == 2:
            raise ConnectionError("connection reset by peer")
        return real(run_id, **kw)

    tracker.client.log_batch = second_fails_once
    every = {k: 0.5 for k in ("train_loss", "val_loss", "val_acc", "lr", "epoch_s",
                              "images_per_s")}
    with tracker._cv:  # 250 epochs x 6 metrics: two chunks of at most 1000 metrics
        for epoch in range(1, 251):
            tracker.log_epoch("a", {"epoch": epoch, **every})
    assert tracker.drain(timeout_s=RETRY_S + 60)
    assert calls[0] == 996 and len(calls) == 3  # 166 whole epochs; the retry: the rest
    for key in every:
        assert all_steps(tracker, "a", key) == list(range(1, 251))


def test_a_write_that_can_never_succeed_is_dropped_with_one_line(tracker, caplog):
    tracker.start_trial("a", "a", {"lr": 0.1})
    # A folder that does not exist: FileNotFoundError is an OSError, but no retry helps.
    tracker.submit(lambda: tracker.client.log_artifact(tracker.parent_run_id,
                                                       "/nonexistent/plot.png"))
    tracker.log_epoch("a", {"epoch": 1, "val_acc": 0.5})
    with caplog.at_level(logging.ERROR, logger="search.record.tracking"):
        assert tracker.drain(timeout_s=RETRY_S / 2)  # not retried after RETRY_S
    assert history(tracker, "a") == [(1, 0.5)]
    assert "MLflow write dropped: FileNotFoundError" in caplog.text


def test_a_write_that_keeps_failing_gets_a_bounded_number_of_tries(tracker, caplog,
                                                                   monkeypatch):
    from mlflow.exceptions import MlflowException

    from search.record import tracking

    monkeypatch.setattr(tracking, "RETRY_S", 0.05)
    monkeypatch.setattr(tracking, "ATTEMPTS", 3, raising=False)
    tries = []

    def always_500() -> None:  # MLflow's default code: counted as a server error
        tries.append(1)
        raise MlflowException("the store broke")

    tracker.submit(always_500)
    tracker.start_trial("a", "a", {"lr": 0.1})
    with caplog.at_level(logging.ERROR, logger="search.record.tracking"):
        assert tracker.drain(timeout_s=20)
    assert len(tries) == 3
    assert "MLflow write dropped after 3 tries: MlflowException: the store broke" in caplog.text
    assert "a" in tracker.children  # the writes behind it went out


def test_errors_are_classified_by_what_a_retry_can_change():
    import requests
    from mlflow.exceptions import MlflowException, RestException

    assert transient(requests.exceptions.ConnectionError("refused"))
    assert transient(TimeoutError("timed out"))
    assert transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "x"}))
    assert transient(RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "x"}))  # 429
    assert not transient(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST",
                                        "message": "x"}))  # 404
    assert not transient(RestException({"error_code": "BAD_REQUEST", "message": "x"}))  # 400
    assert not transient(FileNotFoundError("/nonexistent"))
    assert not transient(PermissionError("read-only"))
    assert transient(MlflowException("API request to http://127.0.0.1:1 failed with exception"))


def test_a_parent_run_that_cannot_be_opened_is_fatal_before_any_trial(tmp_path):
    from search.config import ConfigError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("exp"))  # in the UI's trash
    t = Tracker(uri, "exp", str(tmp_path / "s"), "s", {})
    t.start()
    with pytest.raises(ConfigError, match="mlflow.experiment exp: deleted"):
        t.wait_open(timeout_s=60)
    t.close(timeout_s=5)


def test_a_closed_tracker_stops_its_thread_and_leaves_the_registry(tmp_path):
    from search.record import tracking

    callback = tracking.TrackingCallback(f"sqlite:///{tmp_path / 'mlflow.db'}", "e",
                                         str(tmp_path / "runs" / "x"), "x", {}, 3)
    t = callback.open()
    t.start()
    assert t.drain(timeout_s=60) and tracking._open_trackers[t.search_dir] is t
    assert callback.close(timeout_s=30)
    assert t.search_dir not in tracking._open_trackers
    assert not t._thread.is_alive()
    t.fail_search(reason="late")  # after the end: not queued, and closing again is at once
    assert t.pending == 0 and t.close(timeout_s=30)


def test_a_snapshot_does_no_mlflow_io(tracker):
    import threading

    from search.record.tracking import TrackingCallback

    callback = TrackingCallback(tracker.tracking_uri, "exp", "s", "s", {}, 3)
    callback.tracker = tracker
    blocked = threading.Event()
    tracker.submit(lambda: blocked.wait(30))  # a slow MLflow write in the queue
    done = threading.Event()
    threading.Thread(target=lambda: (callback.get_state(), done.set()), daemon=True).start()
    try:
        assert done.wait(5), "get_state waited for MLflow"
    finally:
        blocked.set()
