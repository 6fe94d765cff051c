"""The search strategy: which Optuna sampler proposes trials, which Ray scheduler stops them.

One place builds both, used by `search.run.build_tuner` for live searches and by
`bench.replay` for searches replayed against learning-curve tables, so a replay measures
exactly what a live search runs.

- Samplers (Optuna's own): `tpe` (multivariate TPE, random for the first
  `n_startup_trials`), `gp` (Gaussian-process sampler, suited to low-dimensional continuous
  spaces), `random`.
- Schedulers (Ray's own): `fifo` (every trial trains the full budget), `asha` (Ray's
  ASHAScheduler on the `epoch` attribute), `pbt` (Ray's PopulationBasedTraining with
  our population and explore step, search/pbt_scheduler.py) and `pb2` (the same with
  Ray's PB2 GP bandit as the explore step, search/pb2_scheduler.py). With `brackets > 1` ASHA runs
  Hyperband-style brackets asynchronously: bracket s judges first at grace_period * rf**s
  epochs, and Ray assigns each new trial to a bracket at random (softmax over the brackets'
  rung counts).
  Optuna's own pruners cannot act under Tune (Ray's OptunaSearch hard-codes NopPruner), so
  Hyperband comes from Ray's scheduler, not from Optuna's HyperbandPruner.
"""

from __future__ import annotations

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from search.config import SchedulerConfig, SearchConfig, SearchSection


def sampler(search: SearchSection) -> optuna.samplers.BaseSampler:
    """The Optuna sampler `search.sampler` names, seeded with `search.seed`."""
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed, multivariate=True,
                                          n_startup_trials=search.n_startup_trials)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=search.seed,
                                         n_startup_trials=search.n_startup_trials)
    return optuna.samplers.RandomSampler(seed=search.seed)


def scheduler(config: SchedulerConfig, epochs: int,
              search: SearchConfig | None = None) -> TrialScheduler:
    """Ray's scheduler `config.name` names, over `epochs` epochs per trial (PBT also
    needs the whole `search` config: its space and seed)."""
    if config.population_based:
        if search is None:
            raise ValueError(f"scheduler.name {config.name} needs the search's config")
        if config.name == "pb2":
            from search.pb2_scheduler import PB2 as Population
        else:
            from search.pbt_scheduler import PBT as Population

        return Population(config, search.space, epochs, search.search.seed)
    if config.name == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=epochs,
                             grace_period=config.grace_period,
                             reduction_factor=config.reduction_factor,
                             brackets=config.brackets)
    return FIFOScheduler()
