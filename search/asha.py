"""ASHA's rung records carried through Ray's experiment checkpoints, so `--resume` keeps them.

On `Tuner.restore` Ray brings back the searcher's state and the callbacks' state, but
rebuilds the scheduler from ``tuner.pkl``, written when the search started
(ray-project/ray#30838). ASHA's rungs would then be empty: trials that ended before the
restart would no longer count, and a restored trial would be recorded at a rung with a
later epoch's value. `RungState` is a Tune callback whose state is the scheduler's rung
records: Ray saves it with every experiment checkpoint (consistent with the trials' state,
on any storage) and hands it back on restore before the trials are re-added.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler


def rung_epochs(grace_period: int, reduction_factor: float, max_t: int) -> tuple[int, ...]:
    """The epochs at which Ray's ASHA (one bracket) judges a trial: its milestones
    grace_period * reduction_factor**k below max_t, each judged at the first epoch that
    reaches it."""
    rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return tuple(math.ceil(grace_period * reduction_factor**k) for k in range(rungs))


class RungState(Callback):
    """Saves and restores `scheduler`'s rungs: per bracket, per rung, the recorded
    ``{trial_id: metric}`` (Ray's `ASHAScheduler` keeps them in ``_brackets``)."""

    def __init__(self, scheduler: ASHAScheduler) -> None:
        # The same object as the Tuner's scheduler: both are pickled in one tuner.pkl, so
        # they are still one object after a restore.
        self.scheduler = scheduler
        self._checked = False

    def on_step_begin(self, iteration, trials, **info) -> None:
        """At a resumed search's first step, forget the rung records of trials Ray's
        restored experiment state does not have. Ray's snapshots are not atomic: storage
        may hold this callback state from a snapshot newer than the experiment state,
        with trials started in between, which `--resume` does not run."""
        if self._checked:
            return
        self._checked = True
        known = {t.trial_id for t in trials}
        for bracket in self.scheduler._brackets:
            for _, recorded in bracket._rungs:
                for trial_id in [t for t in recorded if t not in known]:
                    del recorded[trial_id]

    def get_state(self) -> dict[str, Any]:
        return {
            "num_stopped": self.scheduler._num_stopped,
            "brackets": [
                [[milestone, dict(recorded)] for milestone, recorded in bracket._rungs]
                for bracket in self.scheduler._brackets
            ],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler._num_stopped = state["num_stopped"]
        for bracket, rungs in zip(self.scheduler._brackets, state["brackets"], strict=True):
            for (milestone, recorded), (saved, values) in zip(bracket._rungs, rungs, strict=True):
                assert milestone == saved, "the config of a resumed search cannot change"
                recorded.update(values)
