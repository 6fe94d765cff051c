"""PBT's explore step (search/pbt.py): every key moved by the rules of its range."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from search.config import SpaceConfig
from search.pbt import draw, explore, perturb
from search.space_rules import Range

SPACE = SpaceConfig.model_validate({
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "beta1": {"low": 0.8, "high": 0.99},
    "one_minus_beta2": {"value": 1e-3},
    "eps": {"value": 1e-8},
    "train.schedule": {"choices": ["cosine", "onecycle"]},
    "train.warmup_fraction": {"low": 0.05, "high": 0.5, "step": 0.05,
                              "when": {"train.schedule": "onecycle"}},
    "train.batch_size": {"low": 16, "high": 128, "int": True, "log": True},
})
DONOR = {"lr": 0.01, "beta1": 0.9, "one_minus_beta2": 1e-3, "eps": 1e-8,
         "train.schedule": "onecycle", "train.warmup_fraction": 0.3, "train.batch_size": 64}


def within(r: Range, value) -> bool:
    lo, hi = r.bounds()
    return lo <= value <= hi


def test_a_perturbed_key_moves_by_a_factor_on_its_scale_and_stays_inside():
    keys = SPACE.keys()
    assert perturb(keys["lr"], 0.01, 1.2) == pytest.approx(0.012)
    assert perturb(keys["lr"], 0.09, 1.2) == 0.1  # clipped to the bound
    assert perturb(keys["beta1"], 0.9, 0.8) == pytest.approx(0.9 - 0.2 * 0.19)
    assert perturb(keys["beta1"], 0.97, 1.2) == 0.99
    assert perturb(keys["train.warmup_fraction"], 0.3, 1.2) == 0.4  # 0.3 + 0.09, on the grid
    assert perturb(keys["train.batch_size"], 64, 1.2) == 77 and perturb(
        keys["train.batch_size"], 120, 1.2) == 128


def test_explore_keeps_every_key_inside_its_range_and_follows_conditions():
    keys = SPACE.keys()
    seen_drop = seen_new = False
    for seed in range(300):
        new, how = explore(DONOR, SPACE, random.Random(seed))
        assert new["eps"] == 1e-8 and new["one_minus_beta2"] == 1e-3  # fixed: as they are
        for name, value in new.items():
            assert within(keys[name], value) if not keys[name].categorical else (
                value in keys[name].choices), (name, value)
        assert isinstance(new["train.batch_size"], int)
        onecycle = new["train.schedule"] == "onecycle"
        assert ("train.warmup_fraction" in new) == onecycle
        seen_drop |= not onecycle
        for name, op in how.items():
            if op.startswith("*"):
                factor = float(op[2:])
                assert factor in (1.2, 0.8)
                assert new[name] == perturb(keys[name], DONOR[name], factor)
    assert seen_drop
    cosine = {k: v for k, v in DONOR.items() if k != "train.warmup_fraction"} | {
        "train.schedule": "cosine"}
    for seed in range(50):
        new, how = explore(cosine, SPACE, random.Random(seed))
        if new["train.schedule"] == "onecycle":
            assert how["train.warmup_fraction"] == "new"
            seen_new = True
    assert seen_new


def test_resample_probability_decides_between_perturbing_and_drawing():
    never = [explore(DONOR, SPACE, random.Random(s), resample_probability=0.0)[1]
             for s in range(100)]
    assert all(how["lr"].startswith("*") and how["train.schedule"] == "resample"
               for how in never)  # a categorical key is always drawn
    always = [explore(DONOR, SPACE, random.Random(s), resample_probability=1.0)[1]
              for s in range(100)]
    assert all(how["lr"] == "resample" for how in always)
    some = [explore(DONOR, SPACE, random.Random(s), resample_probability=0.25)[1]["lr"]
            for s in range(400)]
    assert 0.15 < some.count("resample") / 400 < 0.35


def test_the_same_stream_makes_the_same_choices():
    assert explore(DONOR, SPACE, random.Random(7)) == explore(DONOR, SPACE, random.Random(7))
    runs = {str(explore(DONOR, SPACE, random.Random(s))[0]) for s in range(20)}
    assert len(runs) > 10


def test_a_resampled_log_key_is_log_uniform():
    r = SPACE.keys()["lr"]
    rng = random.Random(0)
    logs = [math.log10(draw(r, rng)) for _ in range(4000)]
    assert statistics.median(logs) == pytest.approx(-2.5, abs=0.1)  # mid-way in decades
    assert min(logs) >= -4 and max(logs) <= -1


def test_in_a_search_only_adams_values_and_the_clip_explore_the_rest_is_the_donors():
    from search.pbt import explorable

    rng = random.Random(3)
    for _ in range(50):
        new, how = explore(DONOR, SPACE, rng, resample_probability=0.5,
                           keep=lambda k: not explorable(k))
        assert set(how) <= {"lr", "beta1"}  # the searched Adam keys (the others are fixed)
        assert {k: new[k] for k in ("train.schedule", "train.warmup_fraction",
                                    "train.batch_size")} == \
            {k: DONOR[k] for k in ("train.schedule", "train.warmup_fraction",
                                   "train.batch_size")}
    assert explorable("optimizer.weight_decay") and explorable("train.grad_clip")
    assert not explorable("model.kwargs.width") and not explorable("train.batch_size")
