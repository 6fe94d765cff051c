"""PB2's explore step (search/pb2_scheduler.py): Ray's GP bandit over the space's bounds,
log ranges modelled in log10, seeded per exploit, and its data carried by PBTState."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from ray.tune.schedulers.pbt import _PBTTrialState

from search import config as config_
from search.pb2_scheduler import PB2, from_model, to_model
from search.pbt_scheduler import PBTState
from search.space_rules import bounded

SPACE = config_.SpaceConfig.model_validate({
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "beta1": {"low": 0.8, "high": 0.99},
    "one_minus_beta2": {"value": 1e-3},
    "eps": {"value": 1e-8},
    "train.grad_clip": {"choices": [None, 1.0]},
})
SCHED = config_.SchedulerConfig(name="pb2", perturbation_interval=2)


class Member:
    """What PB2 reads of a Ray trial."""

    def __init__(self, n: int, lr: float, beta1: float) -> None:
        self.trial_id, self.experiment_tag = f"t{n}", f"{n}_lr={lr}"
        self.config = {"lr": lr, "beta1": beta1, "one_minus_beta2": 1e-3, "eps": 1e-8,
                       "train.grad_clip": None}

    def __repr__(self) -> str:
        return self.trial_id

    def __eq__(self, other) -> bool:  # Ray's trials are keys by identity; these by id, so
        return self.trial_id == other.trial_id  # that two populations' members match

    def __hash__(self) -> int:
        return hash(self.trial_id)


def population(seed: int = 0) -> tuple[PB2, Member, Member, list[Member]]:
    """8 members that reported at epochs 2, 4 and 6, gaining most per epoch near lr 1e-2
    and beta1 0.9: (PB2, the weakest, the best, all)."""
    pb2 = PB2(SCHED, SPACE, epochs=12, seed=seed)
    pb2.set_search_properties("val_acc", "max")
    draws = random.Random(0)
    members = [Member(n, 10 ** draws.uniform(-4, -1), draws.uniform(0.8, 0.99))
               for n in range(8)]
    for m in members:
        pb2._trial_state[m] = _PBTTrialState(m)
        acc, c = 0.3, m.config
        for epoch in (2, 4, 6):
            acc += 0.05 * (1 - abs(math.log10(c["lr"]) + 2) / 3 - abs(c["beta1"] - 0.9))
            pb2._save_trial_state(pb2._trial_state[m], epoch, {"epoch": epoch, "val_acc": acc},
                                  m)
    ranked = sorted(members, key=lambda m: pb2._trial_state[m].last_score)
    return pb2, ranked[0], ranked[-1], members


def exploit(pb2: PB2, weak: Member, donor: Member) -> tuple[dict, dict]:
    pb2.rng = pb2.stream(weak, 6)
    return pb2._get_new_config(weak, donor)


def test_only_continuous_unconditional_adam_keys_are_bounded_on_the_gp_scale():
    assert set(bounded(SPACE.keys())) == {"lr", "beta1"}  # fixed and categorical keys are copied
    pb2 = population()[0]
    assert pb2.bounds["lr"] == pytest.approx((-4, -1))  # log10
    assert pb2.bounds["beta1"] == pytest.approx((0.8, 0.99))
    r = bounded(SPACE.keys())["lr"]
    assert from_model(r, to_model(r, 3e-3)) == pytest.approx(3e-3)
    assert from_model(r, 5.0) == pytest.approx(1e-1)  # clipped to the range


def test_an_exploit_chooses_values_within_bounds_and_copies_the_rest():
    pb2, weak, donor, _ = population()
    new, how = exploit(pb2, weak, donor)
    assert set(how) == {"lr", "beta1"} and set(how.values()) == {"GP-UCB"}
    assert 1e-4 <= new["lr"] <= 1e-1 and 0.8 <= new["beta1"] <= 0.99
    assert (new["lr"], new["beta1"]) != (donor.config["lr"], donor.config["beta1"])
    assert {k: new[k] for k in ("one_minus_beta2", "eps", "train.grad_clip")} == \
        {k: donor.config[k] for k in ("one_minus_beta2", "eps", "train.grad_clip")}
    e = pb2.exploits[-1]
    assert (e.trial, e.donor, e.epoch, e.new) == (weak.trial_id, donor.trial_id, 6, new)
    assert "(GP-UCB)" in e.line()
    # The new values join this interval's batch, with the donor's time and reward.
    assert pb2.current.shape == (1, 2)
    last = pb2.data.iloc[-1]
    assert last["Trial"] == weak.trial_id
    assert last["lr"] == pytest.approx(math.log10(new["lr"]), rel=1e-6)


def test_the_same_seed_and_data_choose_the_same_values_and_numpy_is_left_as_it_was():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    chosen = {}
    for seed in (7, 7, 8):
        pb2, weak, donor, _ = population(seed)
        chosen.setdefault(seed, []).append(exploit(pb2, weak, donor))
    assert (np.random.get_state()[1] == before).all()
    assert chosen[7][0] == chosen[7][1]
    assert chosen[7][0][0] != chosen[8][0][0]  # the acquisition's random starts differ


def test_pbtstate_carries_the_data_the_gp_learns_from_across_a_resume():
    pb2, weak, donor, members = population()
    exploit(pb2, weak, donor)
    saved = PBTState(pb2).get_state()
    resumed = population()[0]
    resumed.data = resumed.data.iloc[:0]  # a resumed driver's scheduler starts empty
    PBTState(resumed).set_state(saved)
    assert resumed.data.equals(pb2.data) and (resumed.current == pb2.current).all()
    second = next(m for m in members if m not in (weak, donor))
    assert exploit(resumed, second, donor) == exploit(pb2, second, donor)
    # A trial the snapshot's experiment state does not have is forgotten.
    PBTState(resumed).on_step_begin(0, [weak, donor])
    assert set(resumed.data["Trial"]) == {weak.trial_id, donor.trial_id}


def test_a_pb2_search_needs_a_continuous_key_to_choose():
    base = {"data": {"dataset": "synthetic"}, "train": {"epochs": 4},
            "scheduler": {"name": "pb2", "perturbation_interval": 1},
            "search": {"num_samples": 2}}
    config_.SearchConfig.model_validate(base)
    fixed = {"lr": {"value": 1e-3}, "beta1": {"value": 0.9},
             "one_minus_beta2": {"value": 1e-3}, "eps": {"value": 1e-8}}
    with pytest.raises(ValueError, match="scheduler.name pb2: space has no continuous"):
        config_.SearchConfig.model_validate({**base, "space": fixed})
