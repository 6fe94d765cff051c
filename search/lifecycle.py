"""When a search stops, and why: its trial count, a wall-clock budget, a goal, patience.

    search.num_samples      trials in all; `--resume --num-samples N` extends a finished search
    search.time_budget_s    wall seconds of this run of the command; then running trials stop
    search.goal             stop once a trial that ran every epoch reaches this value
    search.patience_trials  stop once this many trials in a row did not improve the best

Ray Tune ends an experiment when its search algorithm has made `num_samples` trials or a
`Stopper` stops it. On `Tuner.restore` both come back as they were saved: the
trial count from the search generator's snapshot, "finished" included, which no option of
`Tuner.restore` changes. `Lifecycle` is a Tune callback that decides when to stop (its
stopper says so to Ray), keeps its record in Ray's experiment snapshots (as `RungState`
does ASHA's rungs), and on a resume gives the restored generator the count and rules of
this run: a finished search extends, a spent budget or a lost patience is given again, and
a goal that was reached stays reached.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator
from ray.tune.stopper import Stopper

from search.config import SearchSection
from search.record.tracking import outcome

# What `--resume` may change: the rules of the run it starts (`--num-samples` is the first).
RULES = ("search.num_samples", "search.time_budget_s", "search.goal", "search.patience_trials")
# Why a search stopped: the parent run's `stop_reason` tag.
NUM_SAMPLES, TIME_BUDGET, GOAL, PATIENCE = "num_samples", "time_budget", "goal", "patience"


@dataclass(frozen=True)
class Limits:
    """The rules of one run of the search (the config's, with --resume's overrides)."""

    num_samples: int
    time_budget_s: float | None = None
    goal: float | None = None
    patience_trials: int | None = None

    @classmethod
    def of(cls, search: SearchSection) -> Limits:
        return cls(search.num_samples, search.time_budget_s, search.goal,
                   search.patience_trials)


def improves(value: float, best: float | None, mode: str) -> bool:
    """Whether `value` beats `best` (None: nothing yet) in `mode` ("max" or "min")."""
    return best is None or (value > best if mode == "max" else value < best)


def reaches(value: float | None, goal: float | None, mode: str) -> bool:
    """Whether `value` is at the goal or past it."""
    if value is None or goal is None:
        return False
    return value >= goal if mode == "max" else value <= goal


def generator(searcher: Searcher, max_concurrent: int) -> SearchGenerator:
    """Ray's search generator around `searcher`, built here rather than by Ray, so that it
    is pickled in tuner.pkl with the callbacks and `Lifecycle` can reach it after a restore
    (Ray applies `max_concurrent_trials` by the same `ConcurrencyLimiter`)."""
    return SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))


class Lifecycle(tune.Callback):
    """Decides when the search stops and says why (`reason`, `detail`)."""

    def __init__(self, limits: Limits, metric: str, mode: str, epochs: int,
                 search_alg: SearchGenerator) -> None:
        self.limits, self.metric, self.mode, self.epochs = limits, metric, mode, epochs
        # The same object as the Tuner's search algorithm: pickled in one tuner.pkl.
        self.search_alg = search_alg
        self.best: float | None = None  # of the trials that ran every epoch
        self.best_trial: str | None = None
        self.since_best = 0  # trials ended in a row without improving the best
        self.reason: str | None = None
        self.detail = ""
        self._started: float | None = None  # this run's first step (not saved)

    def stopper(self) -> Stopper:
        """What Ray asks whether to stop: this callback's decision."""
        return _Decided(self)

    def resume_with(self, limits: Limits) -> None:
        """This run's rules, given before `Tuner.fit` of a restored search."""
        self.limits = limits
        self._started = None

    def why(self) -> tuple[str, str]:
        """(reason, one line) of the search that just ran."""
        if self.reason is not None:
            return self.reason, self.detail
        return NUM_SAMPLES, f"all {self.limits.num_samples} trials ran (search.num_samples)"

    # ------------------------------------------------------------ Tune's events

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._started is None:
            self._started = time.monotonic()
        budget = self.limits.time_budget_s
        if self.reason is None and budget is not None and \
                time.monotonic() - self._started >= budget:
            self._stop(TIME_BUDGET, f"its time budget of {budget:g} s was spent "
                       "(search.time_budget_s)")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        value = last.get(self.metric)
        ran_all = outcome(last, self.epochs, error=False) == "completed"
        self._ended(trial.trial_id, value if ran_all and _finite(value) else None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial.trial_id, None)

    def _ended(self, trial_id: str, value: float | None) -> None:
        if self.reason is not None:  # trials Ray stops after the decision do not count
            return
        if value is not None and improves(value, self.best, self.mode):
            self.best, self.best_trial, self.since_best = value, trial_id, 0
        else:
            self.since_best += 1
        if value is not None and reaches(value, self.limits.goal, self.mode):
            self._stop(GOAL, f"trial {trial_id} reached the goal: {self.metric} "
                       f"{value:.4f} (search.goal {self.limits.goal:g})")
        elif self.limits.patience_trials and self.since_best >= self.limits.patience_trials:
            self._stop(PATIENCE, f"{self.since_best} trials in a row did not improve the "
                       f"best {self.metric} (search.patience_trials "
                       f"{self.limits.patience_trials})")

    def _stop(self, reason: str, detail: str) -> None:
        """No trial starts from here; running ones stop at their next epoch's report."""
        self.reason, self.detail = reason, detail
        self.search_alg.set_finished()

    # ------------------------------------------------------------ Ray's snapshots

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best, "best_trial": self.best_trial,
                "since_best": self.since_best, "reason": self.reason, "detail": self.detail}

    def set_state(self, state: dict[str, Any]) -> None:
        """A resumed search's record (Ray restores the search algorithm just before)."""
        self.best, self.best_trial = state["best"], state["best_trial"]
        self.since_best, self.reason, self.detail = (state["since_best"], state["reason"],
                                                     state["detail"])
        if self.reason == GOAL and reaches(self.best, self.limits.goal, self.mode):
            return  # a goal reached stays reached: Ray stops at once, nothing new runs
        if self.reason == PATIENCE:
            self.since_best = 0
        self.reason, self.detail = None, ""
        # Ray's generator, as saved: the count of the run that saved it, and finished if
        # that run stopped. This run's count holds instead (private: tests/test_private_parts).
        self.search_alg._total_samples = self.limits.num_samples
        self.search_alg._finished = False


class _Decided(Stopper):
    """Stops each running trial at its next result once the search is to stop. Not
    `stop_all`: Ray ends the trials that stops without telling the searcher or the
    callbacks (no Optuna state, no MLflow end, no progress line for them)."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self.lifecycle.reason is not None

    def stop_all(self) -> bool:
        return False


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def callbacks(tuner: tune.Tuner) -> list[tune.Callback]:
    """A Tuner's callbacks: for a restored one, as Ray unpickled them from tuner.pkl
    (private: tests/test_private_parts)."""
    return list(tuner._local_tuner.get_run_config().callbacks or [])


def why(tuner: tune.Tuner) -> tuple[str, str]:
    """(reason, one line): why the search `tuner` ran stopped."""
    life = next((c for c in callbacks(tuner) if isinstance(c, Lifecycle)), None)
    return life.why() if life is not None else (NUM_SAMPLES, "all its trials ran")

