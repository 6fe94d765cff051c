"""Population-based training on Ray Tune's `PopulationBasedTraining` (issue 26).

Ray's scheduler does the bookkeeping: every `perturbation_interval` epochs it ranks the
running members by their last result, saves the top quantile's checkpoints, and has each
member of the bottom quantile continue from a top member's checkpoint with a new config.
This subclass changes three things:

- **The population comes from our Optuna searcher.** Ray refuses a searcher with PBT; the
  check is skipped, and `search.run` lets the searcher create the whole population at
  once (OptunaSearch over the same space, RandomSampler seeded by `search.seed`,
  `points_to_evaluate` first), so a population is drawn as a random search's trials are.
- **The explore step is search/pbt.py's**: over our space's ranges (log ranges multiplied,
  bounds and grids kept, categorical keys resampled), only Adam's values and the gradient
  clip explored, the rest copied from the donor; the exploiting member's trial reloads the
  donor's weights and Adam state and puts the new values on it (search/trial/retune.py).
- **Its choices are seeded**: the donor a member copies and the values it explores are
  drawn from a stream of their own for each (`search.seed`, member, epoch), instead of
  Python's global `random`. The same scores give the same choices, whatever order the
  members report in and whether or not the driver was restarted in between.

Each exploit is logged as a progress line and kept in `exploits` (the lineage).

Ray rebuilds the scheduler empty on `Tuner.restore` (ray-project/ray#30838): a resumed
PBT would judge every member at its first result, its perturbation times forgotten, and a
synchronous one would wait on members it had already paused. `PBTState` is a Tune callback
whose state is this scheduler's (per member: score, last result, last perturbation and
train epochs; the next synchronous perturbation; the lineage): Ray saves it with every
experiment snapshot and hands it back before the trials are re-added, as for ASHA's rungs
(search/asha.py).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ray.tune.schedulers.pbt as ray_pbt
from ray.tune import Callback
from ray.tune.schedulers import PopulationBasedTraining

from search.config import SchedulerConfig, SpaceConfig
from search.pbt import explorable, explore
from search.space import fmt

log = logging.getLogger("search.progress")


#: The per-member fields of Ray's `_PBTTrialState` that a resumed search takes back.
KEPT = ("orig_tag", "last_score", "last_perturbation_time", "last_train_time", "last_result")


@dataclass
class Exploit:
    """One exploit: `trial`, which had `old`, continued from `donor`'s checkpoint at
    `epoch` with `new`, the donor's values (`given`) explored as `how` says."""

    trial: str
    donor: str
    epoch: int
    old: dict[str, Any]
    given: dict[str, Any]
    new: dict[str, Any]
    how: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        """`trial a copies trial b at epoch 4: lr 0.03 -> 0.0012 (0.001 * 1.2), ...`"""
        def source(k: str) -> str:
            if self.how[k].startswith("*"):
                return f" ({fmt(self.given[k])} {self.how[k]})"
            return f" ({self.how[k]})"

        changes = ", ".join(
            f"{k} {fmt(self.old[k]) if k in self.old else '-'} -> {fmt(self.new[k])}{source(k)}"
            for k in self.how)
        return (f"trial {self.trial} copies trial {self.donor} at epoch {self.epoch}: "
                f"{changes or 'nothing explored'}")


@contextlib.contextmanager
def donors_drawn_from(rng: random.Random) -> Iterator[None]:
    """Ray's PBT draws the donor with the `random` module it imported; for the duration,
    that name is `rng`."""
    saved = ray_pbt.random
    ray_pbt.random = rng
    try:
        yield
    finally:
        ray_pbt.random = saved


class PBT(PopulationBasedTraining):
    """Ray's PBT with our population, explore step and random stream (see the module)."""

    def __init__(self, cfg: SchedulerConfig, space: SpaceConfig, epochs: int,
                 seed: int | None) -> None:
        super().__init__(
            time_attr="epoch",  # metric and mode: the Tuner's (set_search_properties)
            perturbation_interval=cfg.perturbation_interval,
            quantile_fraction=cfg.quantile_fraction,
            resample_probability=cfg.resample_probability,
            perturbation_factors=tuple(cfg.perturbation_factors),
            custom_explore_fn=lambda config: config,  # unused: _get_new_config explores
            log_config=False,  # no pbt_policy_*.txt: the lineage is in `exploits`
            synch=cfg.synch,
        )
        self.space, self.epochs, self.seed = space, epochs, seed
        self.rng = random.Random(seed)  # this exploit's stream (`stream`)
        self.exploits: list[Exploit] = []
        self.restored: dict[str, dict[str, Any]] = {}  # per trial id, from PBTState

    def stream(self, trial, epoch: int) -> random.Random:
        """The draws of `trial`'s exploit at `epoch`: seeded by the search's seed, the
        member's number (the counter Ray's search generator starts its experiment tag with,
        the same in every run of one config, unlike its random trial id) and the epoch; a
        string seed is hashed by SHA-512, the same in any process."""
        member = self._trial_state[trial].orig_tag.split("_", 1)[0]
        return random.Random(f"{self.seed}/{member}/{epoch}")

    def on_trial_add(self, tune_controller, trial) -> None:
        """Ray's, without its refusal of a searcher (ours draws the population); a resumed
        member gets back its state as saved (PBTState)."""
        state = self._trial_state[trial] = ray_pbt._PBTTrialState(trial)
        saved = self.restored.pop(trial.trial_id, None)
        if saved is not None:
            for key in KEPT:
                setattr(state, key, saved[key])
            # A top member's last checkpoint, for the members that copy it before it is
            # judged again: Ray restored its latest one.
            if saved["had_checkpoint"]:
                state.last_checkpoint = trial.checkpoint

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        """Ray's, except at a member's last epoch: it has finished, and is neither judged
        nor paused (Ray's PBT, knowing no budget, would copy a donor into it there)."""
        if result.get(self._time_attr, 0) >= self.epochs:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile,
                               lower_quantile) -> None:
        """Ray's, with donors drawn from our stream, and only among top members whose
        checkpoint is at least as far on as this member: a member never goes back to an
        epoch it has reported (its curve would repeat steps)."""
        if trial in lower_quantile:
            now = self._trial_state[trial].last_train_time
            upper_quantile = [t for t in upper_quantile
                              if self._trial_state[t].last_train_time >= now]
            if not upper_quantile:
                self._trial_state[trial].last_checkpoint = None
                return
        self.rng = self.stream(trial, self._trial_state[trial].last_train_time)
        with donors_drawn_from(self.rng):
            super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile,
                                           lower_quantile)

    def _get_new_config(self, trial, trial_to_clone) -> tuple[dict, dict]:
        donor = trial_to_clone.config
        new, how = explore(donor, self.space, self.rng, self._perturbation_factors,
                           self._resample_probability, keep=lambda k: not explorable(k))
        return self.record(trial, trial_to_clone, new, how)

    def record(self, trial, trial_to_clone, new: dict, how: dict) -> tuple[dict, dict]:
        """The exploit of `trial` from `trial_to_clone` to `new`, kept in the lineage and
        said on a progress line; (new, how), as Ray's `_get_new_config` returns."""
        exploit = Exploit(trial.trial_id, trial_to_clone.trial_id,
                          int(self._trial_state[trial_to_clone].last_train_time),
                          dict(trial.config), dict(trial_to_clone.config), new, how)
        self.exploits.append(exploit)
        log.info("%s", exploit.line())
        return new, how

    # What a subclass's explore step learns from (PB2's data), through PBTState.

    def extra_state(self) -> dict[str, Any]:
        """The explore step's own state, for Ray's snapshots (PBT's has none)."""
        return {}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """The explore step's state as `extra_state` gave it."""

    def forget_others(self, known: set[str]) -> None:
        """Forget what the explore step holds of trials not in `known`."""


class PBTState(Callback):
    """Saves and restores `scheduler`'s state through Ray's experiment snapshots (see the
    module): per member the fields in `KEPT` and whether it had a checkpoint to give, the
    next synchronous perturbation epoch, Ray's counters, the lineage (`exploits`) and what the
    explore step learns from (`extra_state`: PB2's data)."""

    def __init__(self, scheduler: PBT) -> None:
        # The same object as the Tuner's scheduler (both pickled in one tuner.pkl).
        self.scheduler = scheduler
        self._checked = False

    def get_state(self) -> dict[str, Any]:
        s = self.scheduler
        return {
            "members": {trial.trial_id: {**{k: getattr(state, k) for k in KEPT},
                                         "had_checkpoint": state.last_checkpoint is not None}
                        for trial, state in s._trial_state.items()},
            "next_sync": s._next_perturbation_sync,
            "counts": (s._num_perturbations, s._num_checkpoints),
            "exploits": list(s.exploits),
            "extra": s.extra_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        s = self.scheduler
        s.restored = dict(state["members"])
        s._next_perturbation_sync = state["next_sync"]
        s._num_perturbations, s._num_checkpoints = state["counts"]
        s.exploits[:] = state["exploits"]  # in place: the tracking callback holds the list
        s.set_extra_state(state.get("extra", {}))

    def on_step_begin(self, iteration, trials, **info) -> None:
        """At a resumed search's first step, forget what the snapshot's trials do not have
        (storage may hold this state from a newer snapshot than Ray's trials, as for
        ASHA's rungs)."""
        if self._checked:
            return
        self._checked = True
        known = {t.trial_id for t in trials}
        self.scheduler.restored.clear()
        self.scheduler.exploits[:] = [e for e in self.scheduler.exploits
                                      if e.trial in known and e.donor in known]
        self.scheduler.forget_others(known)
