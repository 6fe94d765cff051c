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
- **Its choices come from one seeded stream** (`random.Random(search.seed)`): the donor a
  member copies and the values it explores, instead of Python's global `random`.

Each exploit is logged as a progress line and kept in `exploits` (the lineage).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ray.tune.schedulers.pbt as ray_pbt
from ray.tune.schedulers import PopulationBasedTraining

from search.config import SchedulerConfig, SpaceConfig
from search.pbt import explorable, explore
from search.space import fmt

log = logging.getLogger("search.progress")


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
        self.space, self.epochs = space, epochs
        self.rng = random.Random(seed)
        self.exploits: list[Exploit] = []

    def on_trial_add(self, tune_controller, trial) -> None:
        """Ray's, without its refusal of a searcher (ours draws the population)."""
        self._trial_state[trial] = ray_pbt._PBTTrialState(trial)

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
        with donors_drawn_from(self.rng):
            super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile,
                                           lower_quantile)

    def _get_new_config(self, trial, trial_to_clone) -> tuple[dict, dict]:
        donor = trial_to_clone.config
        new, how = explore(donor, self.space, self.rng, self._perturbation_factors,
                           self._resample_probability, keep=lambda k: not explorable(k))
        exploit = Exploit(trial.trial_id, trial_to_clone.trial_id,
                          int(self._trial_state[trial_to_clone].last_train_time),
                          dict(trial.config), dict(donor), new, how)
        self.exploits.append(exploit)
        log.info("%s", exploit.line())
        return new, how
