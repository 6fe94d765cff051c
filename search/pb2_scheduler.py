"""PB2, population-based bandits (Parker-Holder et al. 2020), on our PBT (issue 26).

Everything of search/pbt_scheduler.py holds: the population drawn by our searcher, a weak
member copies a top member's weights and Adam state, the seeded per-exploit stream, the
lineage, and the state carried through `--resume` (PBTState). What differs is how the
copying member's new values are chosen: instead of a random perturbation, Ray's PB2 step
(`ray.tune.schedulers.pb2._explore`) fits a time-varying Gaussian process to how much the
metric improved per epoch over each interval, under which values, and takes the values
that maximise its upper confidence bound within the bounds.

- **Bounds from the space**: every explorable key (Adam's values, the gradient clip) that
  is a continuous range without a condition. A log range is modelled in log10, so lr's
  [1e-5, 1e-1] is searched by order of magnitude, as the sampler drew it; a chosen value
  comes back clipped, on the range's grid. Other keys are copied from the donor (Ray's
  PB2 has no bandit for categories).
- **Seeded**: the GP's optimiser and the acquisition's random starts draw from numpy's
  global generator; for each exploit it is seeded from the member's stream, then put back.
- **Resumable**: what the GP learns from (Ray's `data` frame, the batch of values chosen
  at this interval, the last interval's epoch) is in PBTState's snapshot.
- At a member's first exploit there is no interval to learn from yet (PB2 needs two
  results per configuration); Ray's step then copies the donor's values unchanged.
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from ray.tune.schedulers import pb2 as ray_pb2

from search.config import SchedulerConfig, SpaceConfig
from search.pbt import fit
from search.pbt_scheduler import PBT
from search.space_rules import Range, bounded

GP = "GP-UCB"  # how a key chosen by the bandit is described in an exploit's line


def to_model(r: Range, value: float) -> float:
    """A value on the scale the GP models: log10 on a log range."""
    return math.log10(value) if r.log else float(value)


def from_model(r: Range, x: float) -> float | int:
    """The GP's value back on `r`: clipped, on its grid."""
    return fit(r, 10.0 ** x if r.log else x)


@contextlib.contextmanager
def numpy_drawn_from(rng: random.Random) -> Iterator[None]:
    """numpy's global generator seeded from `rng` for the duration, then as it was."""
    saved = np.random.get_state()
    np.random.seed(rng.getrandbits(32))
    try:
        yield
    finally:
        np.random.set_state(saved)


@contextlib.contextmanager
def quiet_fit() -> Iterator[None]:
    """scikit-learn's GP warns at most fits of a few points that a length scale sits at its
    bound (ConvergenceWarning), and SciPy that L-BFGS-B's `disp` is deprecated: pages of
    warnings per exploit on the user's console, saying nothing they can act on."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


class PB2(PBT):
    """Our PBT whose explore step is Ray's PB2 GP bandit over the space's bounds."""

    def __init__(self, cfg: SchedulerConfig, space: SpaceConfig, epochs: int,
                 seed: int | None) -> None:
        super().__init__(cfg, space, epochs, seed)
        self.ranges = bounded(space.keys())
        self.bounds = {k: (to_model(r, r.bounds()[0]), to_model(r, r.bounds()[1]))
                       for k, r in self.ranges.items()}
        self.data = pd.DataFrame()  # Ray's PB2 rows: Trial, Time, each key, Reward
        self.current: np.ndarray | None = None  # values chosen at this interval so far
        self.last_exploration_time = 0

    def point(self, config: dict[str, Any]) -> dict[str, float]:
        """`config`'s bounded keys on the GP's scale."""
        return {k: to_model(r, config[k]) for k, r in self.ranges.items()}

    def _save_trial_state(self, state, time: int, result: dict, trial) -> float:
        """Ray's, plus the row PB2 learns from: the member's values and score at `time`."""
        score = super()._save_trial_state(state, time, result, trial)
        row = {"Trial": trial.trial_id, "Time": result[self._time_attr],
               **self.point(trial.config), "Reward": score}
        rows = [self.data] if not self.data.empty else []
        self.data = pd.concat([*rows, pd.DataFrame([row])]).reset_index(drop=True)
        return score

    def _get_new_config(self, trial, trial_to_clone) -> tuple[dict, dict]:
        """The donor's config with the bounded keys chosen by Ray's PB2 step (the rest
        copied), recorded as an exploit."""
        donor, given = trial_to_clone.config, self.point(trial_to_clone.config)
        if self.data["Time"].max() > self.last_exploration_time:
            self.current = None  # a new interval: no batch chosen yet
        with numpy_drawn_from(self.rng), quiet_fit():
            chosen, self.data = ray_pb2._explore(self.data, self.bounds, self.current,
                                                 trial_to_clone.trial_id, trial.trial_id,
                                                 given)
        self.data = self.data.reset_index(drop=True)
        batch = np.array([[chosen[k] for k in self.bounds]])
        if self.data["Time"].max() > self.last_exploration_time:
            self.last_exploration_time = self.data["Time"].max()
            self.current = batch
        else:
            self.current = np.concatenate((self.current, batch), axis=0)
        new, how = dict(donor), {}
        for k, r in self.ranges.items():
            if chosen[k] != given[k]:  # else the donor's, exactly (log10 does not round-trip)
                new[k], how[k] = from_model(r, chosen[k]), GP
        return self.record(trial, trial_to_clone, new, how)

    # ---------------------------------------------------- through PBTState's snapshots

    def extra_state(self) -> dict[str, Any]:
        return {"data": self.data.copy(), "current": self.current,
                "last_exploration_time": self.last_exploration_time}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            self.data, self.current = state["data"], state["current"]
            self.last_exploration_time = state["last_exploration_time"]

    def forget_others(self, known: set[str]) -> None:
        if not self.data.empty:
            self.data = self.data[self.data["Trial"].isin(known)].reset_index(drop=True)
