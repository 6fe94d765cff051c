"""Deleting a search's superseded checkpoints, from the driver.

A trial decides when it writes a checkpoint (search/trial/checkpoints.py); Ray copies it
into the search's storage and the driver registers it. A checkpoint may go once the
experiment state in storage, the file `--resume` reads, names a newer one of its trial:
that is decided here, in the driver, by reading that file back.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import posixpath
import time

import pyarrow.fs
from ray import tune
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial

log = logging.getLogger(__name__)

CHECKPOINT_DIR_PREFIX = "checkpoint_"  # Ray's names: checkpoint_000012, zero-padded
# How often Ray's loop may list the experiment folder; Ray snapshots at most every 10 s.
CHECK_PERIOD_S = 5.0


class CheckpointJanitor(tune.Callback):
    """Deletes each trial's checkpoints that are older than the one the experiment state in
    storage names for it.

    Ray's own `CheckpointConfig(num_to_keep)` deletes a checkpoint as soon as a newer one is
    registered, while the experiment state in storage may still name it; a driver killed
    then cannot resume that trial ("... does not exist"). So Ray keeps every checkpoint
    (`num_to_keep=None`) and this callback deletes, between the steps of Ray's loop, only
    what the newest stored experiment state (the file `Tuner.restore` reads) has superseded.
    It decides from that file alone: Ray writes a snapshot's files (experiment state,
    searcher, callback states) and then syncs them without waiting, skipping a sync while
    one runs, so no other file in storage tells which experiment state arrived. A state
    that cannot be read is being replaced: nothing is deleted until it can. Checkpoints
    newer than the named one, and those of a trial it names none for, stay.

    Reads Ray's experiment state file (`TuneController.CKPT_FILE_TMPL`, its `trial_data`
    pairs, parsed by `Trial.from_json_state` and `restore_run_metadata` as Ray's resume
    does) and a trial's `storage.storage_filesystem` and `storage.experiment_fs_path`;
    tests/test_checkpoint_janitor.py names each, so a Ray release that moves one fails there.
    """

    def __init__(self) -> None:
        self._last_check = float("-inf")
        self._tidied: tuple | None = None  # (path, mtime, size) of the state last fully acted on
        self._warned = False

    def on_step_begin(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self._last_check < CHECK_PERIOD_S:
            return
        self._last_check = now
        self._tidy(trials)

    def on_experiment_end(self, trials, **info) -> None:
        # Ray's run() (ray/tune/tune.py) awaits a forced final snapshot before it calls this
        # on a normal end or an interrupt, but on an exception in its loop it calls this
        # with no final snapshot, a sync perhaps still running (tune_controller.py cleanup).
        # Reading storage is right either way: a later snapshot names, for each trial, the
        # checkpoint this one names or a newer one.
        self._tidy(trials)

    def _tidy(self, trials) -> None:
        """Delete what the newest stored experiment state has superseded; never raise."""
        try:
            storage = next((t.storage for t in trials if t.storage is not None), None)
            if storage is None:
                return
            fs, experiment = storage.storage_filesystem, storage.experiment_fs_path
            newest = newest_experiment_state(fs, experiment)
            if newest is None:
                return
            key = (newest.path, newest.mtime_ns, newest.size)
            if key == self._tidied:
                return
            try:
                stored = stored_trials(fs, newest.path)
            except (OSError, ValueError) as e:  # being replaced right now: try again later
                log.debug("CheckpointJanitor: %s unreadable (%s)", newest.path, e)
                return
            done = True
            for trial_dir, oldest_named in named_checkpoints(stored).items():
                for path in superseded(fs, posixpath.join(experiment, trial_dir), oldest_named):
                    try:
                        fs.delete_dir(path)
                    except FileNotFoundError:
                        pass  # gone already, which is all that was wanted
                    except Exception as e:  # noqa: BLE001  the next may still go
                        self._warn(e)
                        done = False  # try again at the next check
            if done:
                self._tidied = key
        except Exception as e:  # noqa: BLE001  a tidy storage is not worth ending a search
            self._warn(e)

    def _warn(self, error: Exception) -> None:
        if self._warned:
            log.debug("CheckpointJanitor: %s", error)
            return
        self._warned = True
        log.warning("Superseded checkpoints could not all be deleted (%s: %s); the search "
                    "goes on and they stay. Further such errors are logged at debug level.",
                    type(error).__name__, error)


def newest_experiment_state(fs: pyarrow.fs.FileSystem, experiment: str):
    """The FileInfo of the experiment state file Ray's resume would read, or None.

    Ray's rule (`_find_newest_experiment_checkpoint`): the greatest name matching
    `experiment_state-*.json`; its session timestamps sort as they were made.
    """
    pattern = TuneController.CKPT_FILE_TMPL.format("*")
    states = [f for f in fs.get_file_info(pyarrow.fs.FileSelector(experiment))
              if fnmatch.fnmatch(posixpath.basename(f.path), pattern)]
    return max(states, key=lambda f: posixpath.basename(f.path), default=None)


def stored_trials(fs: pyarrow.fs.FileSystem, state_path: str) -> list[Trial]:
    """The trials an experiment state file holds, restored as Ray's resume restores them
    (`TuneController._restore_trials`); raises if the file is incomplete."""
    with fs.open_input_stream(state_path) as f:
        state = json.loads(f.readall())
    trials = []
    for trial_json, run_metadata_json in state["trial_data"]:
        trial = Trial.from_json_state(trial_json, stub=True)
        trial.restore_run_metadata(run_metadata_json)
        trials.append(trial)
    return trials


def named_checkpoints(stored: list[Trial]) -> dict[str, str]:
    """{trial folder: the oldest checkpoint name in it that a stored trial names}.

    Relative to the experiment folder, as Ray's resume rewrites a moved experiment's paths.
    A trial may name a checkpoint in another trial's folder (PBT clones one); each folder
    keeps the oldest one named in it. A checkpoint outside the experiment is not ours.
    """
    named: dict[str, str] = {}
    for trial in stored:
        checkpoint = trial.checkpoint
        if checkpoint is None:
            continue
        folder, name = posixpath.split(checkpoint.path)
        if posixpath.dirname(folder) != posixpath.dirname(trial.path):
            continue
        folder = posixpath.basename(folder)
        named[folder] = min(name, named.get(folder, name))
    return named


def superseded(fs: pyarrow.fs.FileSystem, trial_dir: str, named: str) -> list[str]:
    """The checkpoints in `trial_dir` older than the one called `named`."""
    listed = fs.get_file_info(pyarrow.fs.FileSelector(trial_dir, allow_not_found=True))
    return [info.path for info in listed
            if posixpath.basename(info.path).startswith(CHECKPOINT_DIR_PREFIX)
            and posixpath.basename(info.path) < named]
