"""A resumed search's MLflow runs brought back to Ray's stored record, before it logs more.

A driver killed mid-search leaves two records. Ray's is in storage: the trials of its last
experiment snapshot, each with the `result.json` synced then. MLflow's is what the tracker
delivered until the kill: ahead of Ray's (epochs, trials and outcomes after the snapshot)
or behind it (writes still queued). `--resume` continues from Ray's record, so MLflow is
made equal to it, by construction, from what the stored state names:

- a run of a trial the stored state does not have is deleted;
- a run ahead of its trial's restored record (an epoch the record lacks, or an outcome
  the record does not have yet) is rebuilt: a new run made from Ray's record alone, then
  the old run deleted. MLflow has no way to delete a single metric point, and a replay
  from an older checkpoint may stop earlier or (GPU, several workers) differ;
- a run behind it gets the missing epochs from the record, and the outcome of a trial
  that had ended;
- a trial of the record without a run gets one.

MLflow's deletion is soft (as in its UI): a deleted run leaves every listing, search and
comparison, and `mlflow gc` removes it from the store for good.

`plan` is the pure decision; the Tracker carries it out (search/record/tracking.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

END_TAGS = ("outcome", "error", "pruned_at_epoch")  # what a run's end adds


@dataclass(frozen=True)
class Restored:
    """One trial as Ray's stored state has it: its epochs (from its result.json) and, if
    it had ended, the tags its run ends with."""

    trial_id: str
    run_name: str
    params: dict[str, Any]
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)  # epoch -> metrics
    timestamps_ms: dict[int, int] = field(default_factory=dict)
    end: dict[str, str] | None = None  # the end tags; None: the trial will run on
    status: str = "RUNNING"  # its run's status: FINISHED or FAILED once ended
    node_id: str | None = None


@dataclass(frozen=True)
class Logged:
    """One child run as MLflow has it."""

    run_id: str
    trial_id: str
    steps: frozenset[int]
    tags: dict[str, str]
    status: str
    start_time: int = 0


@dataclass
class Plan:
    delete: list[str] = field(default_factory=list)  # run ids
    rebuild: list[str] = field(default_factory=list)  # trial ids: a new run from the record
    fill: dict[str, list[int]] = field(default_factory=dict)  # trial id -> epochs to log
    end: list[str] = field(default_factory=list)  # trial ids whose run gets its end
    keep: dict[str, str] = field(default_factory=dict)  # trial id -> its run id


def plan(restored: dict[str, Restored], logged: list[Logged]) -> Plan:
    """What makes MLflow's child runs equal to Ray's restored trials."""
    out = Plan()
    runs: dict[str, list[Logged]] = {}
    for run in sorted(logged, key=lambda r: r.start_time, reverse=True):  # newest first
        if run.trial_id in restored:
            runs.setdefault(run.trial_id, []).append(run)
        else:
            out.delete.append(run.run_id)
    for trial_id, trial in restored.items():
        mine = runs.get(trial_id, [])
        out.delete += [r.run_id for r in mine[1:]]  # a rebuild cut short left two
        if not mine:
            out.rebuild.append(trial_id)
            continue
        run = mine[0]
        ended = {k: run.tags[k] for k in END_TAGS if k in run.tags}
        ahead = (not run.steps <= trial.epochs.keys()
                 or (ended and ended != trial.end)
                 or (trial.end is None and run.status != "RUNNING"))
        if ahead:
            out.rebuild.append(trial_id)
            out.delete.append(run.run_id)
            continue
        out.keep[trial_id] = run.run_id
        missing = sorted(trial.epochs.keys() - run.steps)
        if missing:
            out.fill[trial_id] = missing
        if trial.end is not None and (not ended or run.status != trial.status):
            out.end.append(trial_id)
    return out


def read_record(text: str, metrics: Callable[[dict], dict[str, float]]
                ) -> tuple[dict[int, dict[str, float]], dict[int, int], str | None]:
    """A trial's epochs as Ray's `result.json` (one JSON result a line) holds them: per
    epoch the tracked metrics (`metrics(result)` picks them) and the time, first report of
    an epoch first (a replay repeats it), and the node it last ran on. A line being written
    (cut short) is skipped."""
    epochs: dict[int, dict[str, float]] = {}
    times: dict[int, int] = {}
    node = None
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or "epoch" not in row or row.get("error"):
            continue
        epoch = int(row["epoch"])
        node = row.get("node_id", node)
        if epoch not in epochs:
            epochs[epoch] = metrics(row)
            times[epoch] = int(float(row.get("timestamp", 0)) * 1000)
    return epochs, times, node
