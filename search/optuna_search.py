"""Ray's OptunaSearch, telling Optuna which trials ASHA pruned, with its study in storage.

Stock OptunaSearch reports a trial that a scheduler stopped at an early rung as
COMPLETE with its early metric, so TPE weighs a 2-epoch accuracy against 15-epoch
ones as equals. Here such a trial is told as PRUNED: TPE then ranks it by the last
epoch it reached and its value there (the per-epoch values were already reported
to the Optuna trial as intermediate values).

The study lives in an Optuna storage (by default a journal file in the search folder), so
`optuna.load_study` and `optuna-dashboard` can open it while the search runs and after;
each Optuna trial carries its Ray trial id as the user attribute `ray_trial_id`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna
from ray import tune
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch as RayOptunaSearch

from search.config import ConfigError
from search.record.store import REDACTED, redact

log = logging.getLogger(__name__)

RAY_TRIAL_ID = "ray_trial_id"  # the user attribute naming an Optuna trial's Ray trial
WARM_ATTR = "warm_start"  # an earlier search's trial, imported (search/warm_start.py)
JOURNAL = "optuna.journal"  # the default storage's file, in the search folder
# A database server that does not answer is refused in seconds, not after the operating
# system's TCP timeout (minutes); by SQLAlchemy backend name.
CONNECT_ARGS = {"postgresql": {"connect_timeout": 5}, "mysql": {"connect_timeout": 5}}


_secret_urls: dict[str, str] = {}  # an RDB URL with its password redacted -> the URL


class RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, pickled without the database's password.

    Ray pickles the searcher, and the study's storage with it, into the search's storage
    (tuner.pkl, searcher-state-*.pkl): a shared folder or an object store on a cluster.
    Pickled, the URL's user and password are redacted; unpickled (`--resume`), the URL is
    the one this process was given again (`storage`), or the redacted one, which the
    database then refuses."""

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "url": redact(self.url)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({**state, "url": _secret_urls.get(state["url"], state["url"])})


def storage(url: str | None, folder: Path) -> optuna.storages.BaseStorage:
    """An Optuna storage: an RDB URL (`sqlite:///`, `postgresql://`, ...) as it is, any
    other string as a journal file, and none as `folder/optuna.journal`."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url and "://" in url:
        remember(url)
        return RDBStorage(url)
    path = Path(url) if url else folder / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path.resolve())))


def mend_journal(url: str | None, folder: Path) -> None:
    """Cut a journal's last line if it was never finished (a driver killed, or a disk full,
    in the middle of an append): Optuna would read the next line appended after it as part
    of the same record, and refuse the whole study from there."""
    path = Path(url) if url else folder / JOURNAL
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        whole = f.read().rfind(b"\n") + 1
        f.truncate(whole)
    log.warning("%s: its unfinished last record, cut (the search stopped while writing it)",
                path)


def check_storage(url: str | None) -> None:
    """Refuse, before Ray starts and writing nothing, a `search.optuna_storage` the study
    cannot live in: a database that does not answer or that no installed driver speaks,
    an SQLite file that is no database or whose folder does not exist, a journal that is
    a folder or another file, or whose folder cannot be made. None, the search folder's
    journal, is checked with Ray's storage path."""
    if not url:
        return
    label = f"search.optuna_storage {redact(url)}"
    if "://" in url:
        _check_database(url, label)
    else:
        _check_journal(Path(url), label)


def _check_database(url: str, label: str) -> None:
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError as e:
        raise ConfigError(f"{label}: not a database URL ({_reason(e, url)})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":  # connecting would create the file
        _check_sqlite(parsed.database, label)
        return
    try:
        engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.pool.NullPool,
                                          connect_args=CONNECT_ARGS.get(backend, {}))
        engine.connect().close()
    except Exception as e:  # noqa: BLE001  whatever the dialect or its driver raises
        raise ConfigError(f"{label}: cannot connect ({_reason(e, url)})") from None


def _reason(e: Exception, url: str) -> str:
    """A database error's own line (the driver's, not SQLAlchemy's wrapping of it),
    without the URL's password."""
    cause = getattr(e, "orig", None) or e
    line = f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}"
    secret = urlsplit(url).password
    return line.replace(secret, REDACTED) if secret else line


def _check_sqlite(database: str | None, label: str) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return  # in memory, or an SQLite URI: SQLite's own to check
    path = Path(database)
    if not path.exists():
        if not path.parent.is_dir():
            raise ConfigError(f"{label}: no folder {path.parent}")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{label}: cannot make it: {path.parent} is not writable")
        return
    try:  # read-only: a check writes nothing
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            db.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.Error as e:
        raise ConfigError(f"{label}: cannot open it ({type(e).__name__}: {e})") from None


def _check_journal(path: Path, label: str) -> None:
    if path.is_dir():
        raise ConfigError(f"{label}: is a folder; an Optuna journal is a file")
    if path.exists():
        with path.open("rb") as f:
            first = f.readline()
        if first and not _json_object(first):
            raise ConfigError(f"{label}: not an Optuna journal (its first line is not JSON)")
        return
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not folder.is_dir():
        raise ConfigError(f"{label}: cannot make its folder: {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{label}: cannot make it: {folder} is not writable")


def _json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return False


def remember(url: str) -> None:
    """Keep `url` (with its password) for a storage unpickled later in this process."""
    _secret_urls[redact(url)] = url


class OptunaSearch(RayOptunaSearch):
    def __init__(self, *args: Any, max_epoch: int,
                 history: list[optuna.trial.FrozenTrial] = (),
                 study_attrs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        # Earlier searches' trials (search/warm_start.py), and what the study says of its
        # search (its config, for a later search warm-started from the study alone): set
        # first, since Ray's __init__ sets the study up when it is given the space.
        self._history = list(history)
        self._study_attrs = dict(study_attrs or {})
        super().__init__(*args, **kwargs)
        self._max_epoch = max_epoch

    def _setup_study(self, mode: str | None) -> None:
        """Ray's study setup (it loads a study of this name if the storage has one, and
        queues `points_to_evaluate`). A search killed before Ray saved any state and
        started again finds its study with trials no Ray trial will finish: they are told
        FAIL, so none stays RUNNING, and no queued point is evaluated twice."""
        stale = []
        if self._storage is not None:
            try:
                study_id = self._storage.get_study_id_from_name(self._study_name)
                stale = [t._trial_id for t in self._storage.get_all_trials(study_id)
                         if not t.state.is_finished()]
            except KeyError:  # a new study
                pass
        super()._setup_study(mode)
        for trial_id in stale:
            self._storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        if self._history and not any(WARM_ATTR in t.user_attrs
                                     for t in self._ot_study.get_trials(deepcopy=False)):
            self._ot_study.add_trials(self._history)  # once: a search started again has them
        for key, value in self._study_attrs.items():  # a resume's config replaces the first
            self._ot_study.set_user_attr(key, value)
        if self._metric and self._ot_study.metric_names is None:
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names([self._metric])

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if trial is not None:
            trial.set_user_attr(RAY_TRIAL_ID, trial_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        """Ray's saved searcher, reconciled with the storage, which an interrupted driver
        kept writing after that save: trials it asked for later (Ray does not know them;
        `--resume` samples anew) are told FAIL, so none stays RUNNING forever; trials it
        finished later keep their first result, and Ray's replay of them is not told."""
        super().restore(checkpoint_path)
        known = {t.number for t in self._ot_trials.values()}
        finished = set()
        for frozen in self._ot_study.get_trials(deepcopy=False):
            if frozen.state.is_finished():
                finished.add(frozen.number)
            elif frozen.number not in known:
                self._ot_study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
        self._told_before_resume = {trial_id for trial_id, t in self._ot_trials.items()
                                    if t.number in finished and
                                    trial_id not in self._completed_trials}

    def forget_others(self, known: set[str]) -> None:
        """Forget the Ray trials not in `known` (those of Ray's restored experiment state),
        telling Optuna FAIL for those not finished. Ray's snapshots are not atomic: the
        searcher state in storage may be newer than the experiment state and hold trials
        that `--resume` does not run, which would stay RUNNING in the study forever."""
        ghosts = [t for t in self._ot_trials if t not in known]
        if not ghosts:
            return
        states = {t.number: t.state for t in self._ot_study.get_trials(deepcopy=False)}
        for trial_id in ghosts:
            trial = self._ot_trials.pop(trial_id)
            if not states[trial.number].is_finished():
                self._ot_study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in getattr(self, "_told_before_resume", ()):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in getattr(self, "_told_before_resume", ()):
            self._completed_trials.add(trial_id)
            return
        if result is not None and result.get("error") and trial_id not in self._completed_trials:
            # A trial that reported a deterministic error (search/trial/trainable.py) failed.
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return
        stopped_early = (
            result is not None
            and not error
            and not result.get("diverged", False)
            and result.get("epoch", self._max_epoch) < self._max_epoch
        )
        if stopped_early and trial_id not in self._completed_trials:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


class KnownTrials(tune.Callback):
    """At a resumed search's first step, makes the searcher agree with the trials Ray
    restored: the searcher forgets any others (`OptunaSearch.forget_others`), and Ray's
    search generator counts the restored trials and its concurrency limiter holds those
    still to run. A generator saved after the experiment state (Ray's snapshot files are
    not copied together) counts a trial Ray does not run, so the search would end short
    of num_samples, with a slot held for it forever."""

    def __init__(self, searcher: OptunaSearch, generator: SearchGenerator | None = None
                 ) -> None:
        # The Tuner's own objects: pickled together in tuner.pkl, one object on restore.
        self.searcher = searcher
        self.generator = generator
        self._checked = False

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._checked:
            return
        self._checked = True
        self.searcher.forget_others({t.trial_id for t in trials})
        if self.generator is not None:
            align(self.generator, trials, self.searcher)


def align(generator: SearchGenerator, trials: list, searcher: OptunaSearch) -> None:
    """`generator` set to Ray's restored `trials`: its count of trials made (each came from
    it), and its limiter's live trials (those not ended that the searcher knows)."""
    generator.set_state({**generator.get_state(), "counter": len(trials)})
    limiter = generator.searcher
    if isinstance(limiter, ConcurrencyLimiter):
        live = {t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")
                and t.trial_id in searcher._ot_trials}
        limiter.live_trials, limiter.num_unfinished_live_trials = live, len(live)
