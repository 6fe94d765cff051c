"""Replay a search against a learning-curve table (bench/curves.py), without training.

The searcher and the scheduler are the live search's own objects: `search.optuna_search.
OptunaSearch` (Ray's OptunaSearch as `search.run` subclasses it) over `search.space.
DefineByRun`, with the Optuna sampler `search.strategy.sampler` builds, and the Ray
scheduler `search.strategy.scheduler` builds (ASHAScheduler, with brackets, or FIFO). Only
Tune's loop is replaced, by the few calls it makes, in its order (ray.tune.execution.
tune_controller): `scheduler.on_trial_add`; per result `scheduler.on_trial_result`, then
`searcher.on_trial_result` unless the decision is STOP; at the end `scheduler.
on_trial_complete` and `searcher.on_trial_complete` with the last result. So pruned trials
reach Optuna as PRUNED exactly as in a live search.

A sampled configuration gets the curve of its nearest neighbour in the table: a tabular
benchmark over the table's configurations, which is as fine as the table is dense (hundreds
of rows in four dimensions). The table's searched names are its coordinates (`scale`):
- a float or int range: scaled to [0, 1] of the table's range (log-scaled where the range
  is; an int range exactly as a float one);
- a categorical key (`choices`): the index of the value among the choices, compared for
  equality only (a value the choices lack matches no row);
- a key absent from a sample or a row (a conditional key whose `when:` did not hold, e.g.
  `train.warmup_fraction` under any schedule but onecycle): NaN, which is its own category.
Categories must match exactly: the nearest row is, among the rows with the fewest mismatched
categories (a categorical key of another value, or a key present on one side only; zero
whenever the table holds a row of the sample's categories), the one at the least Euclidean
distance over the numeric keys both have (ties: the first row). So a sample never gets the
curve of another schedule or batch size while the table has its own, however near the
learning rates; not a large penalty added to the distance but an order, mismatches first.
Over floats only this is the plain Euclidean nearest row, as before categories existed.

Time is simulated: `concurrent` workers; a trial costs the measured per-trial overhead
(`overheads`: start-up and hand-over, from the table's own search), then per epoch its
epoch seconds from the table plus the measured per-epoch reporting overhead; the driver's
sampling time (Optuna's ask, measured here as it runs) delays the trial's start. Ray's ASHA
assigns trials to brackets with NumPy's global generator: it is seeded with the replay's
seed, so replays are reproducible (live searches with brackets > 1 are not).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search.config import SchedulerConfig, SearchSection, SpaceConfig


@dataclass(frozen=True)
class Table:
    """A learning-curve table in arrays: row i is one configuration trained to the end."""

    names: list[str]
    space: SpaceConfig
    epochs: int
    points: np.ndarray  # rows x names, scaled to [0, 1]
    # Per row, per epoch (shorter when the trial diverged): the table's metric, higher is
    # better (negated where its mode is min: val_rmse, bits per character).
    val_acc: list[list[float]]
    epoch_s: list[list[float]]
    trial_overhead_s: float  # per trial, besides its epochs
    epoch_overhead_s: float  # per epoch, besides the training (reporting, checkpoints)

    @property
    def finals(self) -> np.ndarray:
        """Each row's last val_acc (0 for a diverged row: it ends there)."""
        return np.array([curve[-1] for curve in self.val_acc])


def scale(space: SpaceConfig, names: list[str], params: dict[str, Any]) -> np.ndarray:
    """`params` as a point of the unit cube of `space` (log-scaled where its range is); a
    categorical key as the index of its value among the choices (-1: not one of them), an
    absent key as NaN (module docstring)."""
    keys = space.keys()
    out = []
    for name in names:
        r = keys[name]
        if name not in params:
            out.append(math.nan)
        elif r.categorical:
            out.append(next((float(i) for i, c in enumerate(r.choices)
                             if same_value(c, params[name])), -1.0))
        else:
            lo, hi, v = r.low, r.high, float(params[name])
            if r.log:
                lo, hi, v = math.log(lo), math.log(hi), math.log(v)
            out.append((v - lo) / (hi - lo) if hi > lo else 0.0)
    return np.array(out)


def same_value(a: Any, b: Any) -> bool:
    """Equal as config values: 64 and 64.0 are (a table keeps numbers as floats), 1 and
    true are not."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return a == b and (numbers or type(a) is type(b))


def categorical(space: SpaceConfig, names: list[str]) -> np.ndarray:
    """Per name, whether `space` samples it from choices."""
    keys = space.keys()
    return np.array([keys[name].categorical for name in names], dtype=bool)


def overheads(raw: dict[str, Any]) -> tuple[float, float]:
    """(per-trial, per-epoch) seconds a table's own search spent besides training epochs.

    Per epoch: each trial's time in Tune (`time_total_s`) less its start-up and epochs, per
    epoch, median over trials. Per trial: the search's span from first trial start to last
    result, times the workers, less every trial's time in Tune, per trial, plus the median
    start-up inside the trial.
    """
    rows = raw["trials"]
    per_epoch = float(np.median([
        max(0.0, r["time_total_s"] - r["startup_s"] - sum(r["epoch_s"])) / len(r["epoch_s"])
        for r in rows]))
    span = max(r["end_ts"] for r in rows) - min(r["start_ts"] for r in rows)
    idle = max(0.0, span * raw["concurrent"] - sum(r["time_total_s"] for r in rows))
    per_trial = idle / len(rows) + float(np.median([r["startup_s"] for r in rows]))
    return per_trial, per_epoch


def table(raw: dict[str, Any]) -> Table:
    """A `Table` from a table file's content (bench.curves.load)."""
    space = SpaceConfig.model_validate(raw["space"])
    names = raw["names"]
    rows = raw["trials"]
    per_trial, per_epoch = (overheads(raw) if "time_total_s" in rows[0]
                            else (raw.get("trial_overhead_s", 0.0), 0.0))
    metric, sign = raw.get("metric", "val_acc"), -1.0 if raw.get("mode") == "min" else 1.0
    return Table(
        names=names, space=space, epochs=raw["epochs"],
        points=np.array([scale(space, names, r["params"]) for r in rows]),
        val_acc=[[sign * v if math.isfinite(v) else -math.inf for v in r[metric]]
                 for r in rows],  # a diverged epoch's nan never reaches a target
        epoch_s=[r["epoch_s"] for r in rows],
        trial_overhead_s=per_trial, epoch_overhead_s=per_epoch,
    )


def nearest(t: Table, params: dict[str, Any]) -> int:
    """The table row nearest to a sampled configuration: fewest mismatched categories
    first, then Euclidean distance over the numeric keys (module docstring)."""
    p = scale(t.space, t.names, params)
    cats = categorical(t.space, t.names)
    absent_rows, absent = np.isnan(t.points), np.isnan(p)
    if not cats.any() and not absent.any() and not absent_rows.any():
        d = ((t.points - p) ** 2).sum(axis=1)  # floats only: plain Euclidean
        return int(np.argmin(d))
    both = ~absent_rows & ~absent
    diff = np.where(both, t.points - p, 0.0)
    d = (diff[:, ~cats] ** 2).sum(axis=1)
    mismatched = (absent_rows != absent) | (cats & both & (t.points != p))
    misses = mismatched.sum(axis=1)
    candidates = np.flatnonzero(misses == misses.min())
    return int(candidates[np.argmin(d[candidates])])


@dataclass(frozen=True)
class Method:
    """A search strategy: the sampler and scheduler sections of a config."""

    name: str
    search: SearchSection
    scheduler: SchedulerConfig
    space: SpaceConfig | None = None  # None: the table's own space

    def seeded(self, seed: int) -> Method:
        return Method(self.name, self.search.model_copy(update={"seed": seed}),
                      self.scheduler, self.space)


def method(name: str, sampler: str, scheduler: str = "fifo", *, n_startup_trials: int = 4,
           grace_period: int = 1, reduction_factor: float = 3, brackets: int = 1,
           space: SpaceConfig | None = None) -> Method:
    """A `Method` from the config fields it sets."""
    return Method(
        name,
        SearchSection(sampler=sampler, n_startup_trials=n_startup_trials,
                      points_to_evaluate=[]),
        SchedulerConfig(name=scheduler, grace_period=grace_period,
                        reduction_factor=reduction_factor, brackets=brackets),
        space,
    )


@dataclass
class Trial:
    """One replayed trial; also the stand-in Ray's scheduler gets (it reads `trial_id`)."""

    trial_id: str
    params: dict[str, Any]
    row: int
    start_s: float
    epochs: int = 0  # epochs trained
    stopped: bool = False  # by the scheduler before its curve ended


@dataclass
class Trace:
    """What a replayed search did: trials in start order; results in the order seen."""

    trials: list[Trial] = field(default_factory=list)
    # (trial index, epoch, val_acc, trial-epochs so far, simulated seconds)
    results: list[tuple[int, int, float, int, float]] = field(default_factory=list)
    study: Any = None  # the replayed search's Optuna study

    def cost_to(self, target: float) -> tuple[float, float] | None:
        """(trial-epochs, seconds) until some result first reaches `target`; None: never."""
        for _, _, value, epochs, seconds in self.results:
            if value >= target:
                return float(epochs), seconds
        return None

    def states(self) -> list[str]:
        """Each trial's Optuna state, as the replayed search told it (COMPLETE, PRUNED...)."""
        return [t.state.name for t in self.study.get_trials(deepcopy=False)]

    def spent(self) -> tuple[float, float]:
        """(trial-epochs, seconds) of the whole replay."""
        return (float(self.results[-1][3]), self.results[-1][4]) if self.results else (0, 0)


def searcher_for(m: Method, space: SpaceConfig, epochs: int, history: list = (),
                 points: list[dict[str, Any]] = ()):
    """The live search's OptunaSearch (in-memory study), ready for `suggest`; `history`
    and `points`: what a warm start gives it (search/warm_start.py), as `build_tuner` does."""
    import optuna

    from search import strategy
    from search.optuna_search import OptunaSearch
    from search.space import DefineByRun

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = OptunaSearch(space=DefineByRun(space), metric=m.search.metric, mode=m.search.mode,
                     sampler=strategy.sampler(m.search), max_epoch=epochs,
                     history=list(history), points_to_evaluate=list(points) or None)
    s.set_search_properties(None, None, {})
    return s


def replay(t: Table, m: Method, seed: int, *, space: SpaceConfig | None = None,
           concurrent: int = 2, budget_epochs: int = 3000, stop_at: float | None = None,
           max_trials: int | None = None, history: list = (),
           points: list[dict[str, Any]] = ()) -> Trace:
    """Run method `m` with `seed` against table `t` until `budget_epochs` trial-epochs are
    spent, `max_trials` trials started, or some result reaches `stop_at`. `history`,
    `points`: an earlier search's trials for the study and configurations to run first."""
    import warnings

    from ray.tune.schedulers import TrialScheduler

    from search import strategy

    space = space or m.space or t.space
    m = m.seeded(seed)
    np.random.seed(seed)  # Ray's ASHA picks brackets with NumPy's global generator
    searcher = searcher_for(m, space, t.epochs, history, points)
    scheduler = strategy.scheduler(m.scheduler, t.epochs)
    scheduler.set_search_properties(m.search.metric, m.search.mode)
    trace = Trace(study=searcher._ot_study)
    running: dict[int, float] = {}  # trial index -> when its next epoch ends
    clock, spent = 0.0, 0

    def start(now: float) -> None:
        ask = time.perf_counter()
        index = len(trace.trials)
        trial_id = f"{index:05d}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params = searcher.suggest(trial_id)
        ask_s = time.perf_counter() - ask
        row = nearest(t, params)
        trial = Trial(trial_id, params, row, now + ask_s)
        trace.trials.append(trial)
        scheduler.on_trial_add(None, trial)
        running[index] = trial.start_s + t.trial_overhead_s + epoch_cost(row, 1)

    def epoch_cost(row: int, epoch: int) -> float:
        return t.epoch_s[row][epoch - 1] + t.epoch_overhead_s

    def may_start() -> bool:
        return (spent < budget_epochs
                and (max_trials is None or len(trace.trials) < max_trials))

    for _ in range(concurrent):
        if may_start():
            start(clock)
    while running:
        index = min(running, key=lambda i: (running[i], i))
        clock = running.pop(index)
        trial = trace.trials[index]
        trial.epochs += 1
        spent += 1
        epoch, curve = trial.epochs, t.val_acc[trial.row]
        value = curve[epoch - 1]
        result = {"epoch": epoch, "training_iteration": epoch, m.search.metric: value,
                  "diverged": epoch == len(curve) and len(curve) < t.epochs,
                  "trial_id": trial.trial_id}
        trace.results.append((index, epoch, value, spent, clock))
        decision = scheduler.on_trial_result(None, trial, result)
        if decision != TrialScheduler.STOP:
            searcher.on_trial_result(trial.trial_id, result)
        if stop_at is not None and value >= stop_at:
            break  # what follows cannot change the cost to reach stop_at
        if decision == TrialScheduler.STOP or epoch == len(curve):
            trial.stopped = epoch < len(curve)
            scheduler.on_trial_complete(None, trial, result)
            searcher.on_trial_complete(trial.trial_id, result=result)
            if may_start():
                start(clock)
        else:
            running[index] = clock + epoch_cost(trial.row, epoch + 1)
    return trace


def ert(costs: list[float | None], spent: list[float]) -> float:
    """Expected running time to a target over repeated runs: everything spent by all runs
    (a run that reached the target counts until it did) over the runs that reached it;
    inf when none did. The estimator of Auger and Hansen (2005), used by COCO."""
    hits = [c for c in costs if c is not None]
    if not hits:
        return math.inf
    return (sum(hits) + sum(s for c, s in zip(costs, spent, strict=True) if c is None)) / len(hits)


def targets(t: Table, quantiles: tuple[float, ...] = (0.90, 0.97, 0.99)) -> dict[float, float]:
    """Targets at quantiles of the table's final accuracies (nearest-rank, so each is an
    accuracy some configuration in the table reaches)."""
    finals = np.sort(t.finals)
    return {q: float(finals[min(len(finals) - 1, math.ceil(q * len(finals)) - 1)])
            for q in quantiles}


def table_trial(t: Table) -> Callable[..., None]:
    """A trial function with `search.trial.trainable.run_trial`'s signature that trains nothing:
    it reports, epoch by epoch, the curve of the table row nearest to its sample. With it, a
    live search (search.run.build_tuner, Ray Tune's loop) runs against the same table as a
    replay, which is how tests/test_replay.py checks the replay against Tune."""

    def trial(params: dict[str, Any], base: Any, rungs: tuple[int, ...] = (),
              checkpoint_period_s: float | None = None) -> None:
        from ray import tune

        row = nearest(t, params)
        curve = t.val_acc[row]
        for epoch, value in enumerate(curve, start=1):
            tune.report({"epoch": epoch, "val_acc": value, "train_loss": 1.0 - value,
                         "diverged": epoch == len(curve) and len(curve) < t.epochs})

    return trial
