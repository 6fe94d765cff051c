"""A search's storage filling up: nothing half-written, the search stopped in one line.

Ray copies every file of a search into its storage path (a trial's checkpoint, the
experiment state that `--resume` reads, error files) with pyarrow, straight into the
file's final name. On a full disk that leaves a truncated file where the next read
expects a whole one: an empty `checkpoint.pt`, an `experiment_state-*.json` cut in the
middle (measured: the search could not be resumed). `atomic_copies` makes each copy into a
local storage path write a sibling `NAME.part-*` and rename it into place, so a file there
is either the old one or the new one, whole.

A trial that cannot write its checkpoint raises `DiskFullError`; the driver stops the whole
search at the first one (every trial writes to the same disk), with Ray's last complete
state on disk, so `--resume` continues from each trial's last whole checkpoint once space
is freed.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import uuid
from collections.abc import Iterator
from pathlib import Path

from ray import tune

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How the errors name themselves when only their text crosses a process (Ray's error files).
FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "[Errno 28]", "[errno 28]")
# Ray's helper that every copy into (and out of) storage goes through. Private, so guarded
# by tests/test_private_parts.py and bounded by pyproject.toml's ray pin.
RAY_COPY = "_pyarrow_fs_copy_files"


class DiskFullError(OSError):
    """No space left where the search writes: not the trial's fault, and retrying before
    space is freed fails again."""


class StopWhenFull(tune.Callback):
    """Ends the search at the first trial that found the storage full, before Ray retries
    it (a retry would fail the same way, as would every other trial): Tuner.fit raises
    with this error in its chain, and Ray's last complete state stays for `--resume`."""

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._check(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._check(trial)

    @staticmethod
    def _check(trial) -> None:
        path = trial.error_file  # the driver's own copy: storage may hold none
        if not path or not Path(path).is_file():
            return
        latest = Path(path).read_text(errors="replace").rsplit("Failure # ", 1)[-1]
        if names_full(latest):
            reason = next((line.strip().split(": ", 1)[-1] for line in reversed(latest.splitlines())
                           if names_full(line)), "no space left on device")
            raise DiskFullError(f"trial {trial.trial_id}: {reason}")


def chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then what caused it, and so on (Ray wraps a trial's error in a TuneError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_full(error: BaseException | None) -> bool:
    """Whether `error`, or anything that caused it, is a full disk or quota."""
    return any(isinstance(e, DiskFullError)
               or (isinstance(e, OSError) and e.errno in FULL_ERRNOS)
               or (isinstance(e, OSError) and any(t in str(e) for t in FULL_TEXTS))
               for e in chain(error))


def names_full(text: str) -> bool:
    """Whether an error's text (Ray's error.txt of a trial) says the disk is full."""
    return DiskFullError.__name__ in text or any(t in text for t in FULL_TEXTS)


class HideTrialTraceback(logging.Filter):
    """Drops Ray's traceback of a trial that found the disk full: the search's own line
    (`stopped`) says what happened and what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and is_full(record.exc_info[1]))


def quiet_ray(logger: str = "ray.tune.execution.tune_controller") -> None:
    """Install HideTrialTraceback on Ray's trial-failure logger (once)."""
    target = logging.getLogger(logger)
    if not any(isinstance(f, HideTrialTraceback) for f in target.filters):
        target.addFilter(HideTrialTraceback())


def stopped(error: BaseException, where: str, name: str) -> DiskFullError:
    """The one line a search that ran out of space ends with: where, what could not be
    written, and how to go on."""
    first = next((e for e in chain(error) if isinstance(e, DiskFullError)), None)
    if first is None:
        first = next(e for e in chain(error) if is_full(e) and isinstance(e, OSError))
        where = first.filename or where
    what = " ".join(str(first).split())[:300]
    return DiskFullError(f"{where}: {what}; the search stopped, each trial keeping its last "
                         f"whole checkpoint: free space, then continue it with --resume "
                         f"--name {name}")


def atomic_copies() -> None:
    """Make Ray's copies into a local path whole-or-nothing per file (idempotent; each
    process that writes to storage calls it: the driver and every trial)."""
    import ray.train._internal.storage as ray_storage

    copy = getattr(ray_storage, RAY_COPY)
    if getattr(copy, "atomic", False):
        return

    def atomic(source, destination, source_filesystem=None, destination_filesystem=None,
               **kwargs):
        if not _local(destination, destination_filesystem):
            return copy(source, destination, source_filesystem=source_filesystem,
                        destination_filesystem=destination_filesystem, **kwargs)
        return copy_whole(copy, source, destination, source_filesystem, **kwargs)

    atomic.atomic = True
    setattr(ray_storage, RAY_COPY, atomic)


def _local(path: str, filesystem) -> bool:
    import pyarrow.fs

    if filesystem is None:
        return "://" not in str(path)
    return isinstance(filesystem, pyarrow.fs.LocalFileSystem)


def snapshot_order(pair: tuple[str, str]) -> tuple[bool, str]:
    """Ray's experiment_state-*.json last, the rest by name: a copy cut short (a driver
    killed mid-sync) then leaves the searcher's and callbacks' states and each trial's
    result.json at least as new as the experiment state that names the trials. Ray's
    restore cannot mend the other way round: a search generator older than the trials
    counts too few and makes extra trials, which its searcher never hears of."""
    name = posixpath.basename(pair[1])
    return name.startswith("experiment_state-"), pair[1]


def copy_whole(copy, source: str, destination: str, source_filesystem=None, **kwargs) -> None:
    """`copy` (pyarrow's copy_files) file by file, each to a temporary sibling renamed over
    its final name: a copy that fails leaves the old file (or none), never a part."""
    import pyarrow.fs

    if source_filesystem is None:
        source_filesystem, source = pyarrow.fs.FileSystem.from_uri(str(source))
    info = source_filesystem.get_file_info(source)
    if info.type == pyarrow.fs.FileType.File:
        pairs = [(source, str(destination))]
    else:
        found = source_filesystem.get_file_info(pyarrow.fs.FileSelector(source, recursive=True))
        Path(destination).mkdir(parents=True, exist_ok=True)
        pairs = []
        for f in found:
            target = posixpath.join(str(destination), posixpath.relpath(f.path, source))
            if f.type == pyarrow.fs.FileType.Directory:
                Path(target).mkdir(parents=True, exist_ok=True)
            elif f.type == pyarrow.fs.FileType.File:
                pairs.append((f.path, target))
    local = pyarrow.fs.LocalFileSystem()
    for src, target in sorted(pairs, key=snapshot_order):
        part = f"{target}.part-{uuid.uuid4().hex[:8]}"
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            copy(src, part, source_filesystem=source_filesystem, destination_filesystem=local,
                 **kwargs)
            os.replace(part, target)
        except BaseException:
            Path(part).unlink(missing_ok=True)
            raise
