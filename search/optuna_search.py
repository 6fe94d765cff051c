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

from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch as RayOptunaSearch

from search.record.store import redact

RAY_TRIAL_ID = "ray_trial_id"  # the user attribute naming an Optuna trial's Ray trial
JOURNAL = "optuna.journal"  # the default storage's file, in the search folder


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


def remember(url: str) -> None:
    """Keep `url` (with its password) for a storage unpickled later in this process."""
    _secret_urls[redact(url)] = url


class OptunaSearch(RayOptunaSearch):
    def __init__(self, *args: Any, max_epoch: int, **kwargs: Any) -> None:
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
    """At a resumed search's first step, hands the searcher the trials Ray restored, so it
    forgets any others (`OptunaSearch.forget_others`)."""

    def __init__(self, searcher: OptunaSearch) -> None:
        # The Tuner's searcher itself: pickled together in tuner.pkl, one object on restore.
        self.searcher = searcher
        self._checked = False

    def on_step_begin(self, iteration, trials, **info) -> None:
        if not self._checked:
            self._checked = True
            self.searcher.forget_others({t.trial_id for t in trials})
