"""The private parts of Ray the search reads, named one by one.

Ray may change any of them in any release (pyproject.toml bounds ray to the versions this
suite passed on). When one moves, the test that names it fails with what reads it and why,
instead of a search failing somewhere inside Ray's loop.
"""

from __future__ import annotations

import optuna
import pytest
import ray
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from search.space import DefineByRun


def needs(obj, attr: str, reader: str) -> object:
    assert hasattr(obj, attr), (
        f"Ray {ray.__version__}: {type(obj).__name__}.{attr} is gone; {reader} reads it. "
        "Adapt that code, or keep ray below this version in pyproject.toml.")
    return getattr(obj, attr)


def test_asha_keeps_its_rungs_where_rungstate_and_rung_epochs_read_them():
    scheduler = ASHAScheduler(time_attr="epoch", max_t=9, grace_period=1, reduction_factor=3)
    reader = "search/asha.py (RungState saves and restores ASHA's rungs across --resume)"
    assert isinstance(needs(scheduler, "_num_stopped", reader), int)
    brackets = needs(scheduler, "_brackets", reader)
    rungs = needs(brackets[0], "_rungs", reader)
    assert [milestone for milestone, _ in rungs] == [9, 3, 1]  # (milestone, {trial: value})
    assert all(recorded == {} for _, recorded in rungs)


def test_optuna_search_keeps_its_study_and_trials_where_ours_reads_them():
    from search.config import SpaceConfig

    searcher = OptunaSearch(space=DefineByRun(SpaceConfig()), metric="val_acc", mode="max",
                            sampler=optuna.samplers.RandomSampler(seed=0))
    reader = "search/optuna_search.py (tells Optuna which trials ASHA pruned or that failed)"
    assert isinstance(needs(searcher, "_ot_study", reader), optuna.Study)
    assert isinstance(needs(searcher, "_ot_trials", reader), dict)
    assert isinstance(needs(searcher, "_completed_trials", reader), set)
    searcher.suggest("t1")
    assert "t1" in searcher._ot_trials


def test_rays_experiment_state_file_name_is_the_one_the_janitor_reads():
    from ray.tune.execution.tune_controller import TuneController

    template = needs(TuneController, "CKPT_FILE_TMPL",
                     "search/record/checkpoint_janitor.py (CheckpointJanitor finds the "
                     "experiment state Ray stored, the one a resume reads)")
    assert template.format("2026-11-27_10-00-00").startswith("experiment_state-")
    assert template.endswith(".json")


@pytest.mark.parametrize("name", ["TUNE_GLOBAL_CHECKPOINT_S", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS",
                                  "RAY_AIR_NEW_OUTPUT"])
def test_the_environment_settings_search_run_makes_are_still_read_by_ray(name):
    import pathlib

    tune_dir = pathlib.Path(ray.__file__).parent / "tune"
    sources = "".join(p.read_text(errors="replace") for p in tune_dir.rglob("*.py"))
    assert name in sources, f"Ray {ray.__version__} no longer reads {name}, which " \
                            "search/run.py library_settings sets"


def test_ray_train_logs_each_report_under_the_logger_warm_quiets():
    import importlib
    import logging

    from search.trial import warm

    for module in warm.NOISY_TRAIN_MODULES:
        loaded = importlib.import_module(module)
        reader = "search/trial/warm.py quiet_train_logs (Ray Train's per-report log lines)"
        logger = needs(loaded, "logger", reader)
        assert logger.name in (module, loaded.__file__), (
            f"Ray {ray.__version__}: {module} logs under {logger.name!r}; {reader} "
            "silences its module name and its file name only")
    warm.quiet_train_logs()
    context = importlib.import_module(warm.NOISY_TRAIN_MODULES[0])
    assert not context.logger.isEnabledFor(logging.INFO)


@pytest.mark.parametrize("method", ["add_param_group", "zero_grad", "state_dict",
                                    "load_state_dict"])
def test_torchs_dynamo_guard_keeps_the_function_it_wraps_where_optim_base_reads_it(method):
    import torch

    guarded = getattr(torch.optim.Optimizer, method)
    assert hasattr(guarded, "__wrapped__"), (
        f"torch {torch.__version__}: Optimizer.{method} no longer exposes __wrapped__; "
        "optim/base.py calls it to keep torch._dynamo out of trial processes. Adapt it.")
    assert guarded.__wrapped__.__name__ == method



def test_mlflow_still_migrates_an_empty_database_where_sqlite_schema_calls_it():
    from mlflow.store.db import utils

    assert callable(getattr(utils, "_initialize_tables", None)), (
        "mlflow.store.db.utils._initialize_tables is gone; search/record/sqlite_schema.py "
        "builds its empty database with it. Adapt it (a failure there only means new "
        "SQLite stores are migrated by MLflow, as without the template).")


def test_rays_copy_into_storage_is_the_function_full_disk_wraps():
    import inspect

    import ray.train._internal.storage as ray_storage

    from search import full_disk

    copy = needs(ray_storage, full_disk.RAY_COPY,
                 "search/full_disk.py (makes each copy into a local storage path whole or "
                 "nothing, so a full disk leaves no half-written checkpoint or state)")
    params = inspect.signature(copy).parameters
    assert {"source", "destination", "source_filesystem",
            "destination_filesystem"} <= set(params)
    # Ray's checkpoint persist and its experiment sync look the name up when they run:
    source = inspect.getsource(ray_storage)
    assert source.count(f"{full_disk.RAY_COPY}(") >= 3


def test_a_tuner_and_rays_search_generator_keep_what_lifecycle_reads(tmp_path):
    from ray import tune
    from ray.tune.search import SearchGenerator

    reader = ("search/lifecycle.py (a resumed search's callbacks, and its generator's count "
              "and finished flag, given this run's rules)")
    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(
        storage_path=str(tmp_path), callbacks=[tune.Callback()]))
    local = needs(tuner, "_local_tuner", reader)
    assert len(local.get_run_config().callbacks) == 1
    from search.config import SpaceConfig

    gen = SearchGenerator(OptunaSearch(space=DefineByRun(SpaceConfig()), metric="val_acc",
                                       mode="max"))
    assert needs(gen, "_total_samples", reader) == 0
    assert needs(gen, "_finished", reader) is False
    gen._total_samples, gen._finished = 5, False
    assert not gen.is_finished()


def test_rays_generator_state_and_concurrency_limiter_are_what_knowntrials_aligns():
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    from search.config import SpaceConfig

    reader = ("search/optuna_search.py (align: a resumed generator counts the trials Ray "
              "restored, its limiter holds those still to run)")
    limiter = ConcurrencyLimiter(OptunaSearch(space=DefineByRun(SpaceConfig()),
                                              metric="val_acc", mode="max"), max_concurrent=1)
    gen = SearchGenerator(limiter)
    assert gen.get_state()["counter"] == 0
    gen.set_state({**gen.get_state(), "counter": 4})
    assert gen.get_state()["counter"] == 4
    assert needs(limiter, "live_trials", reader) == set()
    assert needs(limiter, "num_unfinished_live_trials", reader) == 0
    limiter.live_trials, limiter.num_unfinished_live_trials = {"a"}, 1
    assert limiter.suggest("b") is None  # the slot is held by "a"


def test_rays_pbt_keeps_what_our_pbt_scheduler_overrides_and_reads():
    import ray.tune.schedulers.pbt as ray_pbt
    from ray.tune.schedulers import PopulationBasedTraining

    reader = ("search/pbt_scheduler.py (draws PBT's donors from our seeded stream, "
              "explores with search/pbt.py, skips Ray's refusal of a searcher)")
    assert needs(ray_pbt, "random", reader) is __import__("random")
    needs(ray_pbt, "_PBTTrialState", reader)
    for method in ("_checkpoint_or_exploit", "_get_new_config", "on_trial_add",
                   "on_trial_result"):
        needs(PopulationBasedTraining, method, reader)
    pbt = PopulationBasedTraining(time_attr="epoch", custom_explore_fn=lambda c: c)
    for attr in ("_trial_state", "_time_attr", "_perturbation_factors",
                 "_resample_probability"):
        needs(pbt, attr, reader)


def test_rays_pbt_state_is_what_pbtstate_saves_and_restores():
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import PopulationBasedTraining

    from search.pbt_scheduler import KEPT

    reader = ("search/pbt_scheduler.py's PBTState (carries PBT's state through --resume) "
              "and PBT.stream (a member's number from its experiment tag)")
    pbt = PopulationBasedTraining(time_attr="epoch", custom_explore_fn=lambda c: c)
    assert needs(pbt, "_next_perturbation_sync", reader) == 60.0  # the default interval
    assert needs(pbt, "_num_perturbations", reader) == needs(pbt, "_num_checkpoints",
                                                               reader) == 0
    import ray.tune.schedulers.pbt as ray_pbt

    state = ray_pbt._PBTTrialState(Trial("__fake", stub=True, experiment_tag="3_lr=0.1"))
    for attr in KEPT:
        needs(state, attr, reader)
    assert state.orig_tag.split("_", 1)[0] == "3"
    # Ray's search generator starts a trial's experiment tag with its counter.
    import inspect

    from ray.tune.search.search_generator import SearchGenerator
    source = inspect.getsource(SearchGenerator.create_trial_if_possible)
    assert 'tag = "{0}_{1}".format(str(self._counter)' in source, reader


def test_rays_json_logger_restores_result_json_where_resultlog_overrides_it():
    import inspect

    from ray.tune.logger import JsonLoggerCallback

    reader = "search/record/result_log.py (no stale result.json over the driver's own)"
    needs(JsonLoggerCallback, "_restore_from_remote", reader)
    assert "self._restore_from_remote(EXPR_RESULT_FILE, trial)" in \
        inspect.getsource(JsonLoggerCallback.log_trial_start), reader


def test_rays_pb2_explore_step_is_the_function_our_pb2_calls():
    import inspect

    from ray.tune.schedulers import pb2

    explore = needs(pb2, "_explore", "search/pb2_scheduler.py (PB2's GP bandit, called with "
                    "our bounds on the GP's scale and our seeded numpy)")
    assert list(inspect.signature(explore).parameters) == ["data", "bounds", "current",
                                                           "base", "old", "config"]
