"""When a trial checkpoints (search/trial/checkpoints.py) and where ASHA judges it
(search/asha.py); which checkpoints the driver deletes: tests/test_checkpoint_janitor.py."""

from __future__ import annotations

import pytest
from ray.tune.schedulers import ASHAScheduler

from search.asha import rung_epochs
from search.trial.checkpoints import COST_FACTOR, CheckpointPolicy, checkpoint_due


@pytest.mark.parametrize("grace, factor, max_t", [
    (1, 3, 6), (2, 3, 15), (1, 2, 10), (2, 2.5, 30), (1, 4, 100), (3, 3, 3), (1, 3, 27),
])
def test_rung_epochs_are_the_epochs_rays_asha_judges_at(grace, factor, max_t):
    # Names Ray's private bracket state (`_brackets[0]._rungs`, also read by RungState): a
    # Ray release that renames it fails here, with the attribute in the traceback.
    scheduler = ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=grace,
                              reduction_factor=factor)
    milestones = sorted(milestone for milestone, _ in scheduler._brackets[0]._rungs)
    # ASHA judges a trial at the first reported epoch that reaches a milestone.
    assert rung_epochs(grace, factor, max_t) == tuple(-(-m // 1) for m in milestones)


def test_a_checkpoint_is_due_at_a_must_epoch_or_after_the_period():
    assert checkpoint_due(2, frozenset({2, 6}), since_last_s=0.0, period_s=10.0)
    assert not checkpoint_due(3, frozenset({2, 6}), since_last_s=9.9, period_s=10.0)
    assert checkpoint_due(3, frozenset({2, 6}), since_last_s=10.0, period_s=10.0)


def test_adaptive_policy_checkpoints_rungs_last_epoch_and_spaces_the_rest_by_cost():
    policy = CheckpointPolicy(epochs=15, rungs=(2, 6))
    # Simulated trial: 0.1 s epochs, each checkpoint costing 0.02 s.
    now, written = 0.0, []
    for epoch in range(1, 16):
        now += 0.1
        if policy.due(epoch, now):
            now += 0.02
            policy.written(now, 0.02)
            written.append(epoch)
    assert written[0] == 1  # the first epoch measures what a checkpoint costs
    assert {2, 6, 15} <= set(written)
    assert len(written) < 15  # but not every epoch
    # A checkpoint that is not forced comes COST_FACTOR x 0.02 s = 0.38 s after the last
    # one: 4 epochs of 0.1 s.
    min_gap = -(-COST_FACTOR * 0.02 // 0.1)
    for before, after in zip(written, written[1:], strict=False):
        if after not in (2, 6, 15):
            assert after - before >= min_gap, written


def test_slow_epochs_checkpoint_every_epoch_and_a_fixed_period_is_obeyed():
    slow = CheckpointPolicy(epochs=4)
    now, written = 0.0, []
    for epoch in range(1, 5):
        now += 3.0  # a 3 s epoch against a 0.05 s checkpoint: 5% allows every epoch
        if slow.due(epoch, now):
            slow.written(now, 0.05)
            written.append(epoch)
    assert written == [1, 2, 3, 4]
    every_epoch = CheckpointPolicy(epochs=5, period_s=0.0)
    assert all(every_epoch.due(e, 0.0) for e in range(1, 6))
    fixed = CheckpointPolicy(epochs=100, period_s=60.0)
    fixed.written(0.0, 0.001)
    assert not fixed.due(5, 59.0) and fixed.due(6, 60.0) and fixed.due(100, 1.0)

