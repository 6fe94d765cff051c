"""A resumed search's MLflow runs made equal to Ray's stored record (search/record/
reconcile.py): the plan, and the Tracker carrying it out on a real SQLite MLflow store."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from search.record.reconcile import Logged, Restored, plan, read_record
from search.record.tracking import RETRY_S, Tracker, tracked

ENDED = {"outcome": "pruned", "pruned_at_epoch": "2"}


def record(*epochs: int) -> dict[int, dict[str, float]]:
    return {e: {"val_acc": e / 10} for e in epochs}


def restored(trial_id: str, *epochs: int, end=None) -> Restored:
    return Restored(trial_id, trial_id, {"lr": 0.1}, record(*epochs), end=end,
                    status="FINISHED" if end else "RUNNING")


def test_the_plan_deletes_rebuilds_and_completes_until_mlflow_equals_ray():
    trials = {t.trial_id: t for t in [
        restored("same", 1, 2),
        restored("ahead", 1),  # MLflow got epochs 2 and 3 after the snapshot
        restored("behind", 1, 2, 3),  # writes were queued when the driver died
        restored("ended", 1, 2, end=ENDED),  # ended before the snapshot; its end was queued
        restored("reopened", 1),  # ended after the snapshot: Ray will run it on
        restored("new"),  # started just before the snapshot; its run was never made
    ]}
    runs = [
        Logged("r-same", "same", frozenset({1, 2}), {}, "RUNNING"),
        Logged("r-ahead", "ahead", frozenset({1, 2, 3}), {}, "RUNNING"),
        Logged("r-behind", "behind", frozenset({1}), {}, "RUNNING"),
        Logged("r-ended", "ended", frozenset({1, 2}), {}, "RUNNING"),
        Logged("r-reopened", "reopened", frozenset({1}), {"outcome": "completed"}, "FINISHED"),
        Logged("r-unknown", "unknown", frozenset({1}), {}, "RUNNING"),  # Ray never knew it
    ]
    p = plan(trials, runs)
    assert sorted(p.delete) == ["r-ahead", "r-reopened", "r-unknown"]
    assert sorted(p.rebuild) == ["ahead", "new", "reopened"]
    assert p.fill == {"behind": [2, 3]}
    assert p.end == ["ended"]
    assert p.keep == {"same": "r-same", "behind": "r-behind", "ended": "r-ended"}


def test_a_rebuild_cut_short_is_finished_by_the_next_plan():
    # The new run was made (newer) but the old one not yet deleted.
    trials = {"a": restored("a", 1, 2)}
    runs = [Logged("old", "a", frozenset({1, 2, 3}), {}, "RUNNING", start_time=1),
            Logged("new", "a", frozenset({1}), {}, "RUNNING", start_time=2)]
    p = plan(trials, runs)
    assert p.delete == ["old"] and p.keep == {"a": "new"} and p.fill == {"a": [2]}


def test_ray_records_each_epoch_first_as_reported_and_a_cut_line_is_skipped():
    lines = [{"epoch": 1, "val_acc": 0.1, "timestamp": 10, "node_id": "n1"},
             {"epoch": 2, "val_acc": 0.2, "timestamp": 11},
             {"epoch": 2, "val_acc": 0.25, "timestamp": 12, "node_id": "n2"},  # a replay
             {"error": "x"}]
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"epoch": 3, "val'
    epochs, times, node = read_record(text, tracked)
    assert epochs == {1: {"val_acc": 0.1}, 2: {"val_acc": 0.2}}
    assert times == {1: 10000, 2: 11000} and node == "n2"


def test_the_tracker_makes_mlflow_equal_to_the_restored_record(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = Tracker(uri, "exp", "/runs/s", "s", {})  # the killed driver's
    before.start()
    for trial, epochs in (("ahead", 3), ("behind", 1), ("unknown", 2)):
        before.start_trial(trial, trial, {"lr": 0.1})
        for e in range(1, epochs + 1):
            before.log_epoch(trial, {"epoch": e, "val_acc": e / 10})
    assert before.close(timeout_s=60)

    after = Tracker(uri, "exp", "/runs/s", "s", {})  # the resumed driver's
    after.start()
    after.wait_open()
    real_delete, deletes = after.client.delete_run, []

    def delete_fails_once(run_id):  # the connection breaks: the retry must still delete
        deletes.append(run_id)
        if len(deletes) == 1:
            raise ConnectionError("connection reset by peer")
        real_delete(run_id)

    after.client.delete_run = delete_fails_once
    lines = {"ahead": [1], "behind": [1, 2, 3], "ended": [1, 2]}
    ended = {"outcome": "completed"}
    after.reconcile([
        (Restored(t, f"{t} lr=0.1", {"lr": 0.1}, end=ended if t == "ended" else None,
                  status="FINISHED" if t == "ended" else "RUNNING"),
         lambda t=t: "\n".join(json.dumps({"epoch": e, "val_acc": e / 10, "timestamp": 1})
                               for e in lines[t]))
        for t in lines])
    after.log_epoch("ahead", {"epoch": 2, "val_acc": 0.22})  # the replay, after reconciling
    assert after.drain(timeout_s=RETRY_S + 60) and after.resumed
    assert len(deletes) == 3  # "unknown" and the old "ahead": one of them twice
    client = MlflowClient(uri)
    runs = client.search_runs([after.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = "
                                            f"'{after.parent_run_id}'")
    by_trial = {r.data.tags["trial_id"]: r for r in runs}
    assert sorted(by_trial) == ["ahead", "behind", "ended"]  # "unknown" is gone
    for trial, run in by_trial.items():
        steps = sorted((m.step, m.value)
                       for m in client.get_metric_history(run.info.run_id, "val_acc"))
        expected = [(e, e / 10) for e in lines[trial]] + ([(2, 0.22)] if trial == "ahead"
                                                           else [])
        assert steps == expected, trial
        assert run.data.params == {"lr": "0.1"}
    assert by_trial["ended"].info.status == "FINISHED"
    assert by_trial["ended"].data.tags["outcome"] == "completed"
    assert "outcome" not in by_trial["ahead"].data.tags
    assert after.children["ahead"] != before.children["ahead"]  # rebuilt
    assert after.children["behind"] == before.children["behind"]  # completed in place
    after.close(timeout_s=10)
