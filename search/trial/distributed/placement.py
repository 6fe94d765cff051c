"""Whether a trial's workers fit on the cluster, and how many such trials can run at once.

A multi-worker trial's workers get a placement group of their own (Ray Train makes it), which
Tune does not count: Tune would start as many trials as `search.max_concurrent` allows and
their Train runs would wait for each other's resources. So the search runs at most as many
trials at once as the cluster has room for, and refuses a trial whose workers can never be
placed (a Train run would wait for them forever).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import ray
from ray import tune
from ray.util.placement_group import PlacementGroup

from search.config import ConfigError, ResourcesConfig

PLACEMENT_GROUP = "placement_group"  # the result key naming a trial's workers' group (hex id)


def worker_slots(nodes: Iterable[Mapping[str, float]], worker: Mapping[str, float]) -> int:
    """How many workers asking for `worker` ({"CPU": .., "GPU": ..}) fit on these nodes at
    once: per node, the fewest its CPUs and its GPUs allow."""
    slots = 0
    for node in nodes:
        fits = [math.floor(node.get(key, 0.0) / asked + 1e-9)
                for key, asked in worker.items() if asked > 0]
        slots += min(fits) if fits else 0
    return slots


def concurrent_trials(nodes: list[Mapping[str, float]], resources: ResourcesConfig) -> int:
    """How many trials of `workers_per_trial` workers fit on the cluster at once (>= 1), or
    a ConfigError naming the field when not even one does."""
    worker, workers = resources.worker(), resources.workers_per_trial
    cpu, gpu = worker["CPU"], worker["GPU"]
    slots = worker_slots(nodes, worker)
    if slots < workers:
        most_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        total_gpu = sum(n.get("GPU", 0.0) for n in nodes)
        what = f"{cpu:g} CPU" + (f" and {gpu:g} GPU" if gpu else "")
        raise ConfigError(
            f"resources.workers_per_trial {workers}: the cluster has room for {slots} "
            f"workers of {what} each (nodes: {len(nodes)}, most CPUs on a node "
            f"{most_cpu:g}, GPUs in all {total_gpu:g}), so no trial could ever start")
    return slots // workers


def alive_groups(ids: Iterable[str]) -> list[str]:
    """Those of these placement groups (hex ids) that still hold resources."""
    table = ray.util.placement_group_table()
    return [i for i in ids if table.get(i, {}).get("state", "REMOVED") != "REMOVED"]


def remove_groups(ids: Iterable[str]) -> None:
    for i in alive_groups(ids):
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(i)))


class ReleaseWorkers(tune.Callback):
    """Frees the placement group of a multi-worker trial once the trial has ended.

    When ASHA stops a trial, Tune ends the trial's actor, and with it the Ray Train
    controller and its workers; the workers' placement group is left to Ray Train's
    PlacementGroupCleaner, which asks the dashboard's state API whether the controller died
    and leaks the group when that API is unreachable (no dashboard, as `search.run` starts
    Ray; or several Ray instances on one machine). A leaked group holds its CPUs forever,
    and the next trial waits for them. Rank 0 names its group in every result; this frees
    it when the trial ends, and any left at the end of the search.
    """

    def __init__(self) -> None:
        self.groups: dict[str, str] = {}  # trial id -> its workers' latest placement group

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get(PLACEMENT_GROUP):
            self.groups[trial.trial_id] = result[PLACEMENT_GROUP]

    def _release(self, trial) -> None:
        group = self.groups.pop(trial.trial_id, None)
        if group:
            remove_groups([group])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def on_experiment_end(self, trials, **info) -> None:
        remove_groups(self.groups.values())
        self.groups.clear()

    def get_state(self) -> dict[str, Any]:
        return {"groups": dict(self.groups)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.groups = dict(state.get("groups", {}))
