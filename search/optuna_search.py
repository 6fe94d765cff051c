"""Ray's OptunaSearch, telling Optuna which trials ASHA pruned.

Stock OptunaSearch reports a trial that a scheduler stopped at an early rung as
COMPLETE with its early metric, so TPE weighs a 2-epoch accuracy against 15-epoch
ones as equals. Here such a trial is told as PRUNED: TPE then ranks it by the last
epoch it reached and its value there (the per-epoch values were already reported
to the Optuna trial as intermediate values).
"""

from __future__ import annotations

from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch as RayOptunaSearch


class OptunaSearch(RayOptunaSearch):
    def __init__(self, *args: Any, max_epoch: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epoch = max_epoch

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if result is not None and result.get("error") and trial_id not in self._completed_trials:
            # A trial that reported a deterministic error (search/trainable.py) failed.
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
