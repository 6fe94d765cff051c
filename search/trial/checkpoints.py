"""When a trial writes a checkpoint.

A checkpoint is serialised in the trial, copied into the search's storage by Ray and
registered by the driver: on digits that is 5-30 ms against a 110 ms epoch. A trial
therefore checkpoints where a checkpoint is needed, and otherwise at a period:

- at every ASHA rung (a trial stopped there keeps its state at the epoch it was judged on)
  and at its last epoch (the champion is logged from it);
- otherwise once `period_s` seconds have passed since its last checkpoint. With no period
  set, the period adapts: COST_FACTOR times what the last checkpoint cost, so that
  checkpoints take at most about 5% of a trial's time (Ray's own rule for its experiment
  snapshots). A 3 s epoch then checkpoints every epoch, a 0.1 s one every few.

A retried trial resumes from its last checkpoint and replays the epochs after it; they are
logged to MLflow once (search/record/tracking.py), and replay bitwise on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

COST_FACTOR = 19.0  # checkpoint at most 1/(1 + 19) = 5% of the time


def checkpoint_due(epoch: int, must: frozenset[int], since_last_s: float, period_s: float) -> bool:
    """Whether `epoch` (just trained) is checkpointed."""
    return epoch in must or since_last_s >= period_s


@dataclass
class CheckpointPolicy:
    """The period rule with its state: when the last checkpoint was written, and its cost."""

    epochs: int
    rungs: tuple[int, ...] = ()
    period_s: float | None = None  # None: COST_FACTOR x the last checkpoint's cost
    last_at_s: float = float("-inf")
    last_cost_s: float = 0.0

    def due(self, epoch: int, now_s: float) -> bool:
        period = self.period_s if self.period_s is not None else COST_FACTOR * self.last_cost_s
        return checkpoint_due(epoch, frozenset((*self.rungs, self.epochs)), now_s - self.last_at_s,
                              period)

    def written(self, at_s: float, cost_s: float) -> None:
        self.last_at_s, self.last_cost_s = at_s, cost_s
