"""When a search stops and why (search/lifecycle.py): a finished search extended with
`--resume --num-samples`, a time budget, a goal, patience. The rules alone first, then real
searches on digits through the command's own `main` (its exit code), in one shared Ray."""

from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune.search import ConcurrencyLimiter, SearchGenerator

from search import lifecycle
from search.config import SpaceConfig
from search.lifecycle import GOAL, NUM_SAMPLES, PATIENCE, TIME_BUDGET, Lifecycle, Limits
from search.optuna_search import OptunaSearch
from search.space import DefineByRun
from tests.test_search import children

EPOCHS = 2


def trial(trial_id: str, value: float, epoch: int = EPOCHS):
    return SimpleNamespace(trial_id=trial_id, last_result={"epoch": epoch, "val_acc": value})


def a_lifecycle(limits: Limits, mode: str = "max") -> Lifecycle:
    searcher = OptunaSearch(space=DefineByRun(SpaceConfig()), metric="val_acc", mode=mode,
                            sampler=optuna.samplers.RandomSampler(seed=0), max_epoch=EPOCHS)
    return Lifecycle(limits, "val_acc", mode, EPOCHS, lifecycle.generator(searcher, 2))


def ended(life: Lifecycle, *values: float) -> None:
    for i, v in enumerate(values):
        life.on_trial_complete(0, [], trial(f"t{i}", v))


def test_patience_counts_trials_in_a_row_that_did_not_improve_the_best():
    life = a_lifecycle(Limits(20, patience_trials=2))
    ended(life, 0.5, 0.6, 0.55, 0.7, 0.65)
    assert life.reason is None and life.since_best == 1 and life.best == 0.7
    life.on_trial_complete(0, [], trial("t5", 0.9, epoch=1))  # pruned: not an improvement
    assert life.reason == PATIENCE and life.stopper()("t6", {}) and life.search_alg._finished
    assert "2 trials in a row did not improve the best val_acc" in life.why()[1]


def test_a_goal_counts_only_trials_that_ran_every_epoch_in_the_searchs_direction():
    life = a_lifecycle(Limits(20, goal=60.0), mode="min")
    ended(life, 70.0)
    life.on_trial_complete(0, [], trial("early", 50.0, epoch=1))  # pruned below the goal
    life.on_trial_complete(0, [], trial("nan", math.nan))
    assert life.reason is None and not life.stopper()("t9", {})
    life.on_trial_complete(0, [], trial("t9", 59.5))
    assert life.reason == GOAL and life.best_trial == "t9"
    assert life.why() == (GOAL, "trial t9 reached the goal: val_acc 59.5000 (search.goal 60)")
    life.on_trial_complete(0, [], trial("after", 10.0))  # stopped by Ray: not counted
    assert life.best == 59.5


def test_a_resume_gives_the_count_and_rules_again_but_a_goal_reached_stays():
    for reason, stays in [(PATIENCE, False), (TIME_BUDGET, False), (None, False), (GOAL, True)]:
        before = a_lifecycle(Limits(4, goal=0.9, patience_trials=2))
        ended(before, 0.95 if reason == GOAL else 0.5)
        before.reason = reason
        state = before.get_state()
        after = a_lifecycle(Limits(4, goal=0.9, patience_trials=2))
        gen = after.search_alg
        gen.set_state({"counter": 4, "total_samples": 4, "finished": True, "experiment": None})
        after.resume_with(Limits(9, goal=0.9, patience_trials=2))
        after.set_state(state)
        assert after.stopper()("t", {}) is stays, reason
        assert gen.is_finished() is stays, reason
        if not stays:
            assert gen._total_samples == 9 and after.reason is None
        assert after.best == before.best


def test_a_goal_raised_on_resume_lets_the_search_go_on():
    before = a_lifecycle(Limits(4, goal=0.9))
    ended(before, 0.95)
    after = a_lifecycle(Limits(4, goal=0.9))
    after.resume_with(Limits(4, goal=0.99))
    after.set_state(before.get_state())
    assert after.reason is None


def test_rays_generator_keeps_the_count_where_lifecycle_reopens_it():
    gen = a_lifecycle(Limits(3)).search_alg
    assert isinstance(gen, SearchGenerator) and isinstance(gen.searcher, ConcurrencyLimiter)
    assert set(gen.get_state()) >= {"counter", "total_samples", "finished"}


# ---------------------------------------------------------------- real searches

CONF = f"""
data: {{dataset: digits}}
model: {{name: mlp}}
train: {{epochs: {EPOCHS}}}
search: {{num_samples: 3, max_concurrent: 2, seed: 0}}
scheduler: {{name: fifo}}
mlflow: {{register_as: life}}
"""


@pytest.fixture
def folder(tmp_path, monkeypatch, local_ray):
    """A search folder as the working directory (MLflow's default store in it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "conf.yaml").write_text(CONF)
    return tmp_path


def search(capsys, *argv: str) -> tuple[int, str]:
    """`python -m search.run conf.yaml ARGV`, in this process: (exit code, its lines)."""
    from search.run import environ_kept, main

    with environ_kept():
        code = main(["conf.yaml", *argv])
    return code, capsys.readouterr().out


def record(folder, name: str):
    """(the parent run, its children in the order they started)."""
    parents, kids = children(MlflowClient(f"sqlite:///{folder / 'mlflow.db'}"), name)
    assert len(parents) == 1
    return parents[0], sorted(kids, key=lambda r: r.info.start_time)


def study_trials(folder, name: str) -> list:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(folder / "runs" / name / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage).trials


def test_a_finished_search_extended_runs_more_trials_in_its_study_and_parent_run(
        folder, capsys):
    code, out = search(capsys, "--name", "ext")
    assert code == 0, out
    assert "stopped: all 3 trials ran (search.num_samples)" in out
    parent, first = record(folder, "ext")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("life", "champion")

    code, out = search(capsys, "--name", "ext", "--resume", "--num-samples", "5")
    assert code == 0, out
    assert "stopped: all 5 trials ran (search.num_samples)" in out
    again, kids = record(folder, "ext")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["stop_reason"] == NUM_SAMPLES
    assert len(kids) == 5 and [k.info.run_id for k in kids[:3]] == [
        k.info.run_id for k in first]
    assert all(k.info.status == "FINISHED" for k in kids)
    trials = study_trials(folder, "ext")  # one study: 3 trials, then 2 more
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 5
    assert yaml.safe_load((folder / "runs/ext/search.yaml").read_text())[
        "search"]["num_samples"] == 5  # a later --resume goes on to 5, not 3
    # The champion moves only if a new trial beat it.
    best = max(kids, key=lambda k: k.data.metrics["val_acc"])
    now = client.get_model_version_by_alias("life", "champion")
    versions = client.search_model_versions("name='life'")
    if best.info.run_id in {k.info.run_id for k in first}:
        assert now.version == champion.version and len(versions) == 1
    else:
        assert now.run_id != champion.run_id and len(versions) == 2
    assert best.data.tags.get("champion") == "true"
    # The parent names the new best: params cannot change, so a changed one is a tag.
    assert again.data.tags["best_trial_id"] == best.data.tags["trial_id"]
    lr = again.data.tags.get("best.lr", again.data.params["best.lr"])
    assert lr == best.data.params["lr"]
    assert "MLflow write dropped" not in out


def test_a_goal_stops_the_search_and_a_resume_does_not_undo_it(folder, capsys):
    code, out = search(capsys, "--name", "goal", "--num-samples", "6",
                       "--set", "search.goal=0.5", "--set", "search.max_concurrent=1")
    assert code == 0, out
    parent, kids = record(folder, "goal")
    assert parent.data.tags["stop_reason"] == GOAL and parent.info.status == "FINISHED"
    # One trial at a time: the first one that ran every epoch reached val_acc 0.5.
    assert len(kids) == 1 and kids[0].data.metrics["val_acc"] >= 0.5
    assert f"stopped: trial {kids[0].data.tags['trial_id']} reached the goal" in out
    assert "Stopped: trial" in parent.data.tags["mlflow.note.content"]

    code, out = search(capsys, "--name", "goal", "--resume", "--num-samples", "8")
    assert code == 0, out
    assert "reached the goal" in out
    _, after = record(folder, "goal")
    assert len(after) == 1


def test_a_time_budget_stops_the_search_with_success_and_a_resume_goes_past_it(
        folder, capsys):
    # Far more trials than 5 s can run, twice: CI ran 19 in the first 5 s and the other 21 of
    # an earlier 40 within the resume's 5 s (its start is shorter), so 40 was a race.
    budget = ["--num-samples", "200", "--set", "search.time_budget_s=5"]
    code, out = search(capsys, "--name", "budget", *budget)
    assert code == 0, out
    assert "stopped: its time budget of 5 s was spent (search.time_budget_s)" in out
    parent, kids = record(folder, "budget")
    assert parent.data.tags["stop_reason"] == TIME_BUDGET
    assert parent.info.status == "FINISHED" and 0 < len(kids) < 200
    assert [k.info.status for k in kids] == ["FINISHED"] * len(kids)  # none left RUNNING

    code, out = search(capsys, "--name", "budget", "--resume")
    assert code == 0, out
    again, more = record(folder, "budget")
    assert again.data.tags["stop_reason"] == TIME_BUDGET and len(kids) < len(more) < 200
    finished = [t for t in study_trials(folder, "budget") if t.state.is_finished()]
    assert len(finished) == len(study_trials(folder, "budget"))  # none left RUNNING


def test_patience_stops_the_search_after_that_many_trials_without_a_new_best(
        folder, capsys):
    code, out = search(capsys, "--name", "patience", "--num-samples", "12",
                       "--set", "search.patience_trials=2", "--set", "search.max_concurrent=1")
    assert code == 0, out
    parent, kids = record(folder, "patience")
    # The rule, replayed over the values in the order the trials ran (one at a time).
    best, since, expected = None, 0, len(kids)
    for i, k in enumerate(kids, 1):
        value = k.data.metrics["val_acc"]
        best, since = (value, 0) if best is None or value > best else (best, since + 1)
        if since == 2:
            expected = i
            break
    assert len(kids) == expected
    reason = PATIENCE if expected < 12 else NUM_SAMPLES
    assert parent.data.tags["stop_reason"] == reason
