"""The replay (bench/replay.py) against Ray Tune's own loop, and its figures by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import replay
from search.config import SpaceConfig

EPOCHS = 4


def small_table(rows: int = 12, seed: int = 0) -> replay.Table:
    """A dozen configurations of the default space, 4 epochs each, curves that differ."""
    rng = np.random.default_rng(seed)
    space = SpaceConfig()
    names = ["lr", "beta1", "one_minus_beta2", "eps"]
    points = rng.uniform(size=(rows, len(names)))
    quality = 1.0 - np.abs(points[:, 0] - 0.6) - 0.2 * points[:, 1]  # best lr in the middle
    curves = [[float(q * (1 - 0.5 ** e) + 0.01 * rng.uniform()) for e in range(1, EPOCHS + 1)]
              for q in quality]
    curves[3] = curves[3][:2] + []  # one diverged row: two epochs, the last at 0
    curves[3][-1] = 0.0
    return replay.Table(names=names, space=space, epochs=EPOCHS, points=points,
                        val_acc=curves, epoch_s=[[0.1] * len(c) for c in curves],
                        trial_overhead_s=0.5, epoch_overhead_s=0.01)


def test_nearest_finds_the_row_of_its_own_configuration():
    t = small_table()
    for row, point in enumerate(t.points):
        params = {}
        for name, x in zip(t.names, point, strict=True):
            r = getattr(t.space, name)
            params[name] = (math.exp(math.log(r.low) + x * (math.log(r.high) - math.log(r.low)))
                            if r.log else r.low + x * (r.high - r.low))
        assert replay.nearest(t, params) == row


def test_ert_counts_failed_runs_whole_and_divides_by_successes():
    assert replay.ert([10.0, None, 30.0], [50.0, 100.0, 60.0]) == pytest.approx(70.0)
    assert replay.ert([None, None], [5.0, 5.0]) == math.inf
    assert replay.ert([4.0], [9.0]) == 4.0


def test_targets_are_accuracies_some_row_ends_at():
    t = small_table()
    found = replay.targets(t, (0.5, 0.99))
    assert set(found.values()) <= set(t.finals.tolist())
    assert found[0.99] == max(t.finals)


def test_cost_to_target_is_the_first_result_reaching_it():
    trace = replay.Trace(results=[(0, 1, 0.5, 1, 1.0), (1, 1, 0.7, 2, 1.5),
                                  (0, 2, 0.9, 3, 2.0), (1, 2, 0.95, 4, 2.5)])
    assert trace.cost_to(0.9) == (3.0, 2.0)
    assert trace.cost_to(0.99) is None


def test_fifo_trains_every_trial_to_its_end_and_asha_prunes():
    t = small_table()
    fifo = replay.replay(t, replay.method("random", "random"), 0, budget_epochs=40)
    assert all(not tr.stopped and tr.epochs == len(t.val_acc[tr.row]) for tr in fifo.trials)
    asha = replay.replay(t, replay.method("tpe+asha", "tpe", "asha", reduction_factor=2),
                         0, budget_epochs=40)
    assert any(tr.stopped for tr in asha.trials)
    assert len(asha.trials) > len(fifo.trials)


def test_the_same_seed_replays_the_same_search():
    t = small_table()
    m = replay.method("hyperband", "tpe", "asha", reduction_factor=2, brackets=2)
    a, b = (replay.replay(t, m, 7, budget_epochs=40) for _ in range(2))
    assert [(x.params, x.epochs) for x in a.trials] == [(x.params, x.epochs) for x in b.trials]


@pytest.mark.parametrize(("sampler", "scheduler"), [("tpe", "asha"), ("random", "fifo")])
def test_replay_matches_a_live_search_through_ray_tune(tmp_path, sampler, scheduler):
    """The same method and seed, live (search.run.build_tuner: Ray Tune's loop, our
    OptunaSearch, Ray's ASHA) and replayed: the same configurations, in the same order,
    each trained for the same epochs, told to Optuna in the same state with the same
    intermediate values."""
    import json

    import optuna
    import ray

    from search import config as config_
    from search import optuna_search
    from search.run import build_tuner, library_settings, local_folder, tracking_callback

    t = small_table()
    trials = 10
    m = replay.method(f"{sampler}+{scheduler}", sampler, scheduler, n_startup_trials=3,
                      grace_period=1, reduction_factor=2)
    seed = 3
    replayed = replay.replay(t, m, seed, concurrent=1, max_trials=trials,
                             budget_epochs=10_000)

    cfg = config_.SearchConfig(
        train={"epochs": EPOCHS},
        search=m.search.model_copy(update={"seed": seed, "num_samples": trials,
                                           "max_concurrent": 1}),
        scheduler=m.scheduler, resources={"cpus_per_trial": 0.5},
        mlflow={"register_as": None}, name="live")
    storage, name = str(tmp_path / "runs"), "live"
    library_settings(verbose=False)
    tracking = tracking_callback(cfg, storage, name, f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.open().start()
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="error")
    try:
        build_tuner(cfg, storage, name, tracking, trial=replay.table_trial(t)).fit()
        tracking.open().drain(timeout_s=60)
    finally:
        if started:
            ray.shutdown()

    study = optuna.load_study(study_name=name, storage=optuna_search.storage(
        None, local_folder(storage, name)))
    live = study.get_trials(deepcopy=False)
    assert [tr.params for tr in live] == [
        tr.params for tr in replayed.study.get_trials(deepcopy=False)]
    assert [tr.state.name for tr in live] == replayed.states()
    assert [tr.intermediate_values for tr in live] == [
        tr.intermediate_values for tr in replayed.study.get_trials(deepcopy=False)]
    epochs = {}
    for f in (tmp_path / "runs" / name).glob("trial_*/result.json"):
        results = [json.loads(line) for line in f.read_text().splitlines()]
        epochs[results[0]["config"]["lr"]] = max(r["epoch"] for r in results)
    assert [epochs[tr.params["lr"]] for tr in replayed.trials] == \
        [tr.epochs for tr in replayed.trials]
    if scheduler == "asha":
        assert "PRUNED" in replayed.states()  # the comparison covers pruning decisions


def test_strategy_builds_the_named_sampler_and_hyperband_brackets():
    import optuna

    from search import strategy
    from search.config import SchedulerConfig, SearchSection

    assert isinstance(strategy.sampler(SearchSection(sampler="gp")), optuna.samplers.GPSampler)
    assert isinstance(strategy.sampler(SearchSection()), optuna.samplers.RandomSampler)
    s = strategy.scheduler(SchedulerConfig(grace_period=1, reduction_factor=3, brackets=3), 15)
    assert [[m for m, _ in b._rungs] for b in s._brackets] == [[9, 3, 1], [9, 3], [9]]


SCHEDULES = ("constant", "cosine", "onecycle")


def mixed_table(rows_per_schedule: int = 10, seed: int = 0) -> tuple[replay.Table, list[dict]]:
    """A table over lr x train.schedule (categorical) x train.warmup_fraction (onecycle
    only) x train.batch_size (int, log), read as a table file is (`replay.table`): onecycle
    rows are all better than cosine ones, cosine than constant, and the learning rates of
    the three schedules interleave, so that a row of the wrong schedule is often the
    nearest by learning rate and batch size alone."""
    rng = np.random.default_rng(seed)
    space = SpaceConfig.model_validate({
        "beta1": {"value": 0.9}, "one_minus_beta2": {"value": 1e-3}, "eps": {"value": 1e-8},
        "train.schedule": {"choices": list(SCHEDULES)},
        "train.warmup_fraction": {"low": 0.05, "high": 0.3,
                                  "when": {"train.schedule": "onecycle"}},
        "train.batch_size": {"low": 16, "high": 256, "int": True, "log": True},
    })
    trials = []
    for i in range(rows_per_schedule * len(SCHEDULES)):
        schedule = SCHEDULES[i % 3]
        params = {"lr": float(10 ** rng.uniform(-4, -1)), "train.schedule": schedule,
                  "train.batch_size": float(int(2 ** rng.uniform(4, 8)))}
        if schedule == "onecycle":
            params["train.warmup_fraction"] = float(rng.uniform(0.05, 0.3))
        final = 0.5 + 0.2 * SCHEDULES.index(schedule) + 0.05 * rng.uniform()
        trials.append({"params": params, "epoch_s": [0.1] * EPOCHS,
                       "val_acc": [final * (1 - 0.5 ** e) for e in range(1, EPOCHS + 1)]})
    raw = {"space": space.model_dump(mode="json"), "epochs": EPOCHS, "trials": trials,
           "names": ["lr", "train.schedule", "train.warmup_fraction", "train.batch_size"],
           "trial_overhead_s": 0.5}
    return replay.table(raw), trials


def test_nearest_matches_categories_and_absent_keys_exactly():
    t, trials = mixed_table()
    for row, trial in enumerate(trials):
        assert replay.nearest(t, trial["params"]) == row  # int and absent keys included
    onecycle = next(tr["params"] for tr in trials if tr["params"]["train.schedule"] == "onecycle")
    for schedule in ("constant", "cosine"):  # same lr and batch size, another schedule
        sample = {k: v for k, v in onecycle.items() if k != "train.warmup_fraction"}
        row = trials[replay.nearest(t, sample | {"train.schedule": schedule})]["params"]
        assert row["train.schedule"] == schedule and "train.warmup_fraction" not in row
    # A onecycle sample whose warm-up is missing still gets a onecycle row (one mismatch,
    # the absent key, rather than two).
    sample = {k: v for k, v in onecycle.items() if k != "train.warmup_fraction"}
    assert trials[replay.nearest(t, sample)]["params"]["train.schedule"] == "onecycle"
    # Absent is a value of its own: of two onecycle rows, one without a warm-up (as a
    # table of another space has), a sample gets the one that agrees on having a warm-up,
    # however near the other's learning rate.
    with_warmup = {"lr": 1e-3, "train.schedule": "onecycle", "train.batch_size": 64,
                   "train.warmup_fraction": 0.1}
    without = {"lr": 1e-2, "train.schedule": "onecycle", "train.batch_size": 64}
    two = replay.Table(names=t.names, space=t.space, epochs=EPOCHS,
                       points=np.array([replay.scale(t.space, t.names, p)
                                        for p in (with_warmup, without)]),
                       val_acc=[[0.5], [0.6]], epoch_s=[[0.1], [0.1]],
                       trial_overhead_s=0.0, epoch_overhead_s=0.0)
    assert replay.nearest(two, without | {"train.warmup_fraction": 0.1}) == 0
    assert replay.nearest(two, with_warmup | {"train.warmup_fraction": 0.1}) == 0
    assert replay.nearest(two, {k: v for k, v in with_warmup.items()
                                if k != "train.warmup_fraction"}) == 1


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_replay_over_categorical_and_int_keys_keeps_each_sample_in_its_category(sampler):
    t, trials = mixed_table()
    later = []
    for seed in range(4):
        trace = replay.replay(t, replay.method(sampler, sampler, n_startup_trials=4), seed,
                              max_trials=16, budget_epochs=10_000)
        assert len(trace.trials) == 16
        for tr in trace.trials:
            row = trials[tr.row]["params"]
            assert row["train.schedule"] == tr.params["train.schedule"]
            assert ("train.warmup_fraction" in row) == ("train.warmup_fraction" in tr.params)
            assert ("train.warmup_fraction" in tr.params) == (
                tr.params["train.schedule"] == "onecycle")
            assert isinstance(tr.params["train.batch_size"], int)
        best = max(trace.trials, key=lambda tr: t.finals[tr.row])
        assert best.params["train.schedule"] == "onecycle"  # the clearly better category
        assert all("train.schedule" in tr.params
                   for tr in trace.study.get_trials(deepcopy=False))
        later += [tr.params["train.schedule"] for tr in trace.trials[8:]]
    if sampler == "tpe":  # TPE learns the category: most of its later trials are onecycle
        assert later.count("onecycle") > len(later) / 2


def params_of(t: replay.Table, row: int) -> dict:
    """The configuration of table row `row` (its point back in the space's units)."""
    out = {}
    for name, x in zip(t.names, t.points[row], strict=True):
        r = getattr(t.space, name)
        out[name] = (math.exp(math.log(r.low) + x * (math.log(r.high) - math.log(r.low)))
                     if r.log else r.low + x * (r.high - r.low))
    return out


def test_a_warm_replay_imports_the_earlier_search_and_runs_its_best_first():
    """bench/warm.py: the earlier search reaches the replayed one as search.run passes it
    (search/warm_start.py's mapping, OptunaSearch's history, points_to_evaluate)."""
    from bench import warm
    from search.warm_start import SOURCE_ATTR

    t = small_table()
    raw_rows = [{"params": params_of(t, i)} for i in range(len(t.val_acc))]
    rows = np.array([0, 1, 2, 4, 5, 6, 7, 8])
    history, points = warm.earlier_search(raw_rows, t.val_acc, t, rows, seed=0, k=6, top=2)
    assert len(history) == 6 and all(h.user_attrs[SOURCE_ATTR] == "replay" for h in history)
    best = sorted(history, key=lambda h: -h.value)[:2]
    assert points == [h.params for h in best]
    assert all(h.intermediate_values[t.epochs] == h.value for h in history)
    m = replay.method("tpe", "tpe")
    both = replay.replay(t, m, 0, budget_epochs=20, history=history, points=points)
    ran = [{k: tr.params[k] for k in p} for tr, p in zip(both.trials, points, strict=False)]
    assert ran == points  # the earlier best ran first
    assert sum(SOURCE_ATTR in x.user_attrs for x in both.study.get_trials()) == 6
    cold = replay.replay(t, m, 0, budget_epochs=20)
    assert not any(SOURCE_ATTR in x.user_attrs for x in cold.study.get_trials())
    assert [{k: tr.params[k] for k in points[0]} for tr in cold.trials[:2]] != points


def test_a_table_of_a_lower_is_better_metric_is_replayed_negated():
    raw = {"names": ["lr"], "space": SpaceConfig().model_dump(mode="json"), "epochs": 2,
           "metric": "val_rmse", "mode": "min", "trial_overhead_s": 0.1,
           "trials": [{"params": {"lr": 1e-3}, "val_rmse": [60.0, 55.0], "epoch_s": [1, 1]},
                      {"params": {"lr": 1e-2}, "val_rmse": [70.0, math.nan], "epoch_s": [1, 1]}]}
    t = replay.table(raw)
    assert t.val_acc == [[-60.0, -55.0], [-70.0, -math.inf]]
    assert replay.targets(t, (0.99,))[0.99] == -55.0


def test_the_committed_tables_load():
    """bench/curves/: the learning-curve tables RESULTS.md's replays rest on."""
    from bench import curves

    found = sorted(curves.FOLDER.glob("*.json.gz"))
    assert {p.name for p in found} >= {"digits.json.gz", "digits28.json.gz",
                                       "regression.json.gz", "charlm.json.gz"}
    for path in found:
        raw = curves.load(path)
        t = replay.table(raw)
        assert len(t.val_acc) >= 64 and t.epochs == raw["epochs"]
        assert all(len(c) <= t.epochs for c in t.val_acc)
