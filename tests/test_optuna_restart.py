"""The Optuna side of a search started again after a kill before Ray saved any state
(search/optuna_search.py): its study is found again, and what the killed driver left
unfinished in it is told FAIL rather than left RUNNING or queued twice."""

from __future__ import annotations

import optuna

from search.config import SpaceConfig
from search.optuna_search import OptunaSearch, storage
from search.space import DefineByRun

POINT = {"lr": 1e-3, "beta1": 0.9, "one_minus_beta2": 1e-3, "eps": 1e-8}


def searcher(tmp_path) -> OptunaSearch:
    return OptunaSearch(space=DefineByRun(SpaceConfig()), metric="val_acc", mode="max",
                        sampler=optuna.samplers.RandomSampler(seed=0),
                        points_to_evaluate=[POINT], max_epoch=3,
                        storage=storage(None, tmp_path), study_name="s")


def test_a_restarted_search_fails_what_the_killed_one_left_unfinished(tmp_path):
    killed = searcher(tmp_path)
    killed.suggest("t1")  # the queued point: RUNNING when the driver died
    killed.suggest("t2")
    again = searcher(tmp_path)
    states = [t.state.name for t in again._ot_study.get_trials()]
    assert states == ["FAIL", "FAIL", "WAITING"]  # the point is queued once, anew
    again.suggest("t3")
    assert again._ot_study.get_trials()[-1].params["lr"] == POINT["lr"]


class Known:
    def __init__(self, trial_id: str, status: str = "PENDING") -> None:
        self.trial_id, self.status = trial_id, status


def test_trials_ray_did_not_restore_are_forgotten_by_the_study_and_the_rungs(tmp_path):
    # Storage held searcher and callback states from a snapshot newer than the experiment
    # state: "ghost" was started in between, and --resume does not run it.
    from ray.tune.schedulers import ASHAScheduler

    from search.asha import RungState
    from search.optuna_search import KnownTrials

    s = searcher(tmp_path)
    for trial_id in ("kept", "ghost"):
        s.suggest(trial_id)
    scheduler = ASHAScheduler(time_attr="epoch", max_t=3, grace_period=1, reduction_factor=3,
                              metric="val_acc", mode="max")
    rungs = RungState(scheduler)
    rungs.set_state({"num_stopped": 0, "brackets": [[[3, {}], [1, {"kept": 0.5,
                                                                    "ghost": 0.9}]]]})
    for callback in (KnownTrials(s), rungs):
        callback.on_step_begin(0, [Known("kept")])
    assert list(s._ot_trials) == ["kept"]
    assert [t.state.name for t in s._ot_study.get_trials()] == ["RUNNING", "FAIL"]
    assert dict(scheduler._brackets[0]._rungs)[1] == {"kept": 0.5}


def test_the_generator_counts_the_trials_ray_restored_and_frees_the_ghosts_slot(tmp_path):
    # Ray restored 2 trials ("ended", "kept"); the generator was saved later, after it made
    # "ghost": it would count 3 and hold a slot for "ghost" forever.
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    from search.optuna_search import KnownTrials

    s = searcher(tmp_path)
    limiter = ConcurrencyLimiter(s, max_concurrent=2)
    generator = SearchGenerator(limiter)
    for trial_id in ("ended", "kept", "ghost"):
        s.suggest(trial_id)
    generator.set_state({**generator.get_state(), "counter": 3})
    limiter.live_trials, limiter.num_unfinished_live_trials = {"kept", "ghost"}, 2
    KnownTrials(s, generator).on_step_begin(0, [Known("ended", "TERMINATED"), Known("kept")])
    assert generator.get_state()["counter"] == 2  # one more trial to make for num_samples 3
    assert limiter.live_trials == {"kept"} and limiter.num_unfinished_live_trials == 1
    assert list(s._ot_trials) == ["ended", "kept"]
