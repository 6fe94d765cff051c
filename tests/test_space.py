"""The search space over any config field (search/space.py, search/space_rules.py): every
kind of key sampled by real Optuna samplers, conditions as define-by-run branches, samples
placed at their paths, and the five Adam keys sampled exactly as before."""

from __future__ import annotations

import math

import optuna
import pytest

from search import config
from search.config import SearchConfig, SpaceConfig
from search.optuna_search import OptunaSearch, storage
from search.space import (
    DefineByRun,
    describe,
    distributions,
    fmt,
    sample_line,
    searched,
    short_names,
    trial_config,
    trial_params,
)

SPACE = {
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "beta1": {"value": 0.9},
    "train.schedule": {"choices": ["constant", "cosine", "onecycle"]},
    "train.warmup_fraction": {"low": 0.05, "high": 0.3, "when": {"train.schedule": "onecycle"}},
    "train.batch_size": {"choices": [32, 64, 128]},
    "model.kwargs.width": {"low": 8, "high": 64, "int": True, "log": True},
    "train.label_smoothing": {"low": 0, "high": 0.2, "step": 0.05},
    "train.seed": {"low": 0, "high": 10, "int": True, "step": 5},
    "optimizer.amsgrad": {"choices": [False, True]},
    "train.grad_clip": {"choices": [None, 1.0]},
    "optimizer.name": {"choices": ["adam", "adamw"]},
    "weight_decay": {"low": 1e-4, "high": 1e-1, "log": True,
                     "when": {"optimizer.name": "adamw"}},
}
BASE = {"data": {"dataset": "digits"}, "model": {"name": "cnn"}, "train": {"epochs": 3}}


def search_config(space: dict = SPACE, **sections) -> SearchConfig:
    return config.validate(SearchConfig, {**BASE, **sections, "space": space}, "test")


SAMPLERS = {
    "random": lambda: optuna.samplers.RandomSampler(seed=0),
    "tpe": lambda: optuna.samplers.TPESampler(seed=0, n_startup_trials=4, multivariate=True),
    "gp": lambda: optuna.samplers.GPSampler(seed=0, n_startup_trials=4),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_kind_of_key_is_sampled_inside_its_range(sampler):
    cfg = search_config()
    space = DefineByRun(cfg.space)
    study = optuna.create_study(sampler=SAMPLERS[sampler](), direction="maximize")
    seen = {"train.schedule": set(), "optimizer.name": set()}
    for _ in range(12):
        trial = study.ask()
        fixed = space(trial)
        p = {**trial.params, **fixed}  # as Ray's OptunaSearch merges them
        # weight_decay is sampled, or left as configured; a stepped float as written
        assert fixed == {"beta1": 0.9, "train.label_smoothing": p["train.label_smoothing"]}
        assert 1e-4 <= p["lr"] <= 1e-1
        assert p["train.batch_size"] in (32, 64, 128)
        assert isinstance(p["model.kwargs.width"], int) and 8 <= p["model.kwargs.width"] <= 64
        assert p["train.label_smoothing"] in (0.0, 0.05, 0.1, 0.15, 0.2)
        assert p["train.seed"] in (0, 5, 10)
        assert p["optimizer.amsgrad"] in (False, True) and p["train.grad_clip"] in (None, 1.0)
        # A conditional key is sampled exactly where its condition holds.
        assert ("train.warmup_fraction" in p) == (p["train.schedule"] == "onecycle")
        assert ("weight_decay" in p) == (p["optimizer.name"] == "adamw")
        for k in seen:
            seen[k].add(p[k])
        cfg_ = trial_config(cfg, {**p, **fixed})  # every sample is a valid trial config
        study.tell(trial, cfg_.optimizer.lr * (2 if cfg_.train.schedule == "cosine" else 1))
    assert seen["optimizer.name"] == {"adam", "adamw"}
    assert len(seen["train.schedule"]) >= 2


def test_the_five_adam_keys_are_sampled_exactly_as_before():
    # The space before issue 22: suggest_float of each Adam key in this order.
    def old(trial):
        for name, (lo, hi, log) in {"lr": (1e-4, 1e-1, True), "beta1": (0.8, 0.99, False),
                                    "one_minus_beta2": (1e-4, 1e-1, True),
                                    "eps": (1e-10, 1e-6, True)}.items():
            trial.suggest_float(name, lo, hi, log=log)
        return {"weight_decay": 0.0}

    for make in SAMPLERS.values():
        a, b = (optuna.create_study(sampler=make()) for _ in range(2))
        for i in range(8):
            ta, tb = a.ask(), b.ask()
            assert DefineByRun(SpaceConfig())(ta) == old(tb)
            assert ta.params == tb.params
            a.tell(ta, math.sin(i))
            b.tell(tb, math.sin(i))
    assert searched(SpaceConfig()) == ["lr", "beta1", "one_minus_beta2", "eps"]


def test_a_sample_lands_at_its_paths_and_adams_keys_in_adams_terms():
    cfg = search_config()
    sample = {"lr": 0.01, "beta1": 0.9, "train.schedule": "onecycle",
              "train.warmup_fraction": 0.1, "train.batch_size": 32, "model.kwargs.width": 12,
              "optimizer.amsgrad": True, "train.grad_clip": None, "optimizer.name": "adamw",
              "weight_decay": 0.05, "one_minus_beta2": 0.01}
    t = trial_config(cfg, sample)
    assert (t.optimizer.lr, t.optimizer.beta2, t.optimizer.weight_decay) == (0.01, 0.99, 0.05)
    assert (t.optimizer.name, t.optimizer.amsgrad) == ("adamw", True)
    assert (t.train.schedule, t.train.warmup_fraction, t.train.batch_size) == ("onecycle",
                                                                               0.1, 32)
    assert t.train.grad_clip is None and t.model.kwargs == {"width": 12}
    assert t.train.epochs == 3 and t.data.dataset == "digits"  # the rest as configured
    params = trial_params(sample)
    assert list(params)[:4] == ["lr", "beta1", "beta2", "weight_decay"]
    assert params["beta2"] == pytest.approx(0.99) and params["train.batch_size"] == 32


def test_values_and_lines_read_as_yaml_with_short_names():
    assert [fmt(v) for v in (64, True, False, None, "onecycle", 0.00506, 1024)] == [
        "64", "true", "false", "null", "onecycle", "0.00506", "1024"]
    assert sample_line({"lr": 1e-3, "train.schedule": "cosine", "train.batch_size": 64}) == \
        "lr=0.001 schedule=cosine batch_size=64"
    # Two paths ending alike keep their whole path.
    assert short_names(["model.kwargs.width", "data.kwargs.width", "train.seed"]) == {
        "model.kwargs.width": "model.kwargs.width", "data.kwargs.width": "data.kwargs.width",
        "train.seed": "seed"}


def test_each_key_describes_itself_and_has_its_optuna_distribution():
    cfg = search_config()
    keys = cfg.space.keys()
    assert describe(keys["lr"]) == "log-uniform [0.0001, 0.1]"
    assert describe(keys["beta1"]) == "fixed 0.9"
    assert describe(keys["model.kwargs.width"]) == "int log-uniform [8, 64]"
    assert describe(keys["train.seed"]) == "int uniform [0, 10] step 5"
    assert describe(keys["train.grad_clip"]) == "choice [null, 1]"
    assert describe(keys["weight_decay"]) == "log-uniform [0.0001, 0.1] when optimizer.name=adamw"
    d = distributions(cfg.space)
    assert "beta1" not in d and d["model.kwargs.width"].log and d["train.seed"].step == 5
    assert d["train.schedule"].choices == ("constant", "cosine", "onecycle")


def test_the_space_survives_dump_and_load_and_set_reaches_dotted_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(config.dump(search_config()))
    cfg = config.load(path)
    assert cfg == search_config()
    assert cfg.space.keys()["train.grad_clip"].fixed is False  # choices [null, 1.0]
    cfg = config.load(path, ["space.model.kwargs.width.high=32",
                             "space.train.batch_size.value=64",
                             "space.data.flip={choices: [false, true]}"])
    keys = cfg.space.keys()
    assert keys["model.kwargs.width"].bounds() == (8, 32)
    assert keys["train.batch_size"].fixed and keys["train.batch_size"].candidates() == [64]
    assert keys["data.flip"].choices == [False, True]
    # A conditional key's own config value stands where its condition fails: setting it
    # is no contradiction.
    assert config.load(path, ["train.warmup_fraction=0.2"]).train.warmup_fraction == 0.2


def test_points_to_evaluate_with_dotted_keys_reach_the_trials(tmp_path):
    cfg = search_config(search={"points_to_evaluate": [
        {"lr": 3e-3, "train.schedule": "onecycle", "train.warmup_fraction": 0.1,
         "model.kwargs.width": 16}]})
    searcher = OptunaSearch(space=DefineByRun(cfg.space), metric="val_acc", mode="max",
                            sampler=optuna.samplers.RandomSampler(seed=0),
                            points_to_evaluate=cfg.search.points_to_evaluate, max_epoch=3,
                            storage=storage(None, tmp_path), study_name="s")
    first = searcher.suggest("t1")
    assert first["train.schedule"] == "onecycle" and first["train.warmup_fraction"] == 0.1
    assert first["model.kwargs.width"] == 16 and first["lr"] == 3e-3
    assert trial_config(cfg, first).train.warmup_fraction == 0.1
