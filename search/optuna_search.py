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
from ray.tune.search.optuna import OptunaSearch as RayOptunaSearch

RAY_TRIAL_ID = "ray_trial_id"  # the user attribute naming an Optuna trial's Ray trial
JOURNAL = "optuna.journal"  # the default storage's file, in the search folder


def storage(url: str | None, folder: Path) -> optuna.storages.BaseStorage:
    """An Optuna storage: an RDB URL (`sqlite:///`, `postgresql://`, ...) as it is, any
    other string as a journal file, and none as `folder/optuna.journal`."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url and "://" in url:
        return RDBStorage(url)
    path = Path(url) if url else folder / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path.resolve())))


class OptunaSearch(RayOptunaSearch):
    def __init__(self, *args: Any, max_epoch: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epoch = max_epoch

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
