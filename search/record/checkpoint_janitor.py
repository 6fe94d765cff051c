"""Deleting a search's superseded checkpoints, from the driver.

A trial decides when it writes a checkpoint (search/trial/checkpoints.py); Ray copies it
into the search's storage and the driver registers it. What may be deleted, and when,
depends on which checkpoints the experiment state saved in storage names: that is
decided here, in the driver, at Ray's snapshots.
"""

from __future__ import annotations

import pickle
import posixpath
from typing import Any

import pyarrow.fs
from ray import tune

CHECKPOINT_DIR_PREFIX = "checkpoint_"  # Ray's names: checkpoint_000012, zero-padded


class CheckpointJanitor(tune.Callback):
    """Deletes a trial's superseded checkpoints once Ray's saved experiment state no longer
    names them.

    Ray's own `CheckpointConfig(num_to_keep)` deletes a checkpoint as soon as a newer one is
    registered, while the experiment snapshot in storage may still name it; a driver killed
    then cannot resume that trial ("Could not recover from checkpoint ... does not exist").
    Snapshotting at every step of Ray's loop closes most of that window at a cost that
    grows with the number of trials. Here Ray keeps every checkpoint (`num_to_keep=None`)
    and snapshots at its own period, and this callback, which Ray calls at each snapshot
    (`get_state`), notes each trial's newest checkpoint under the snapshot's number, which
    lands in the snapshot's callback state. Ray syncs one snapshot at a time to storage, so
    once storage shows a snapshot number above j, where j was seen there before, the sync
    of snapshot j has finished: every checkpoint older than those noted at j can go. At the
    end (after Ray's final, awaited snapshot) only each trial's newest checkpoint is kept.
    """

    def __init__(self) -> None:
        self.snapshot = 0
        self._seen = 0  # the newest snapshot number seen in storage
        self._trials: list = []
        self._noted: dict[int, dict[str, Any]] = {}  # snapshot -> {trial path: checkpoint}

    def __getstate__(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "_seen": 0, "_trials": [], "_noted": {}}

    def on_step_begin(self, iteration, trials, **info) -> None:
        self._trials = trials

    def get_state(self) -> dict[str, int]:
        stored = self._stored_snapshot()
        if stored > self._seen:
            # A sync newer than the one that wrote snapshot `_seen` has begun, so that one
            # has finished: storage names no checkpoint older than those noted at `_seen`.
            for j in [j for j in self._noted if j <= self._seen]:
                for checkpoint in self._noted.pop(j).values():
                    delete_older(checkpoint)
            self._seen = stored
        self.snapshot += 1
        self._noted[self.snapshot] = {t.path: t.checkpoint for t in self._trials
                                      if t.checkpoint is not None}
        return {"checkpoint_janitor_snapshot": self.snapshot}

    def set_state(self, state: dict[str, int]) -> None:
        self.snapshot = state.get("checkpoint_janitor_snapshot", 0)

    def on_experiment_end(self, trials, **info) -> None:
        for trial in trials:
            if trial.checkpoint is not None:
                delete_older(trial.checkpoint)

    def _stored_snapshot(self) -> int:
        """The newest snapshot number in the callback state Ray has written to storage."""
        checkpoint = next((c for noted in self._noted.values() for c in noted.values()), None)
        if checkpoint is None:
            return 0
        fs = checkpoint.filesystem
        experiment = posixpath.dirname(posixpath.dirname(checkpoint.path))
        files = fs.get_file_info(pyarrow.fs.FileSelector(experiment))
        states = sorted(f.path for f in files if posixpath.basename(f.path).startswith(
            "callback-states-") and f.path.endswith(".pkl"))
        if not states:
            return 0
        try:
            with fs.open_input_stream(states[-1]) as f:
                saved = pickle.loads(f.read())  # written by this driver's Ray, as Ray reads it
        except Exception:  # noqa: BLE001  being replaced right now: try at the next snapshot
            return 0
        return max((s.get("checkpoint_janitor_snapshot", 0) for s in saved.values()
                    if isinstance(s, dict)), default=0)


def delete_older(checkpoint) -> None:
    """Delete the checkpoints of `checkpoint`'s trial that are older than it."""
    fs, path = checkpoint.filesystem, checkpoint.path
    trial_dir, name = posixpath.split(path)
    for info in fs.get_file_info(pyarrow.fs.FileSelector(trial_dir)):
        other = posixpath.basename(info.path)
        if other.startswith(CHECKPOINT_DIR_PREFIX) and other < name:
            fs.delete_dir(info.path)
