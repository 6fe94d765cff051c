"""When a trial checkpoints (search/trial/checkpoints.py), where ASHA judges it (search/asha.py),
and which checkpoints the driver deletes (search/record/checkpoint_janitor.py)."""

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


def make_trial(exp, name: str, newest: int):
    """A trial as the janitor sees it: its storage folder with checkpoints 0..newest."""
    from types import SimpleNamespace

    from ray.tune import Checkpoint

    trial_dir = exp / name
    for i in range(newest + 1):
        (trial_dir / f"checkpoint_{i:06d}").mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(path=str(trial_dir),
                           checkpoint=Checkpoint(str(trial_dir / f"checkpoint_{newest:06d}")))


def saved(exp, janitor_state: dict) -> None:
    """Ray's callback-state file in storage, as one of its snapshot syncs writes it."""
    import pickle

    (exp / "callback-states-2026-11-27_10-00-00.pkl").write_bytes(
        pickle.dumps({0: None, 1: janitor_state}))


def checkpoints(exp, name: str) -> list[str]:
    return sorted(p.name for p in (exp / name).iterdir())


def test_janitor_deletes_only_what_a_fully_stored_snapshot_no_longer_names(tmp_path):
    from search.record.checkpoint_janitor import CheckpointJanitor

    exp = tmp_path / "exp"
    janitor = CheckpointJanitor()
    trials = [make_trial(exp, "a", 1)]
    janitor.on_step_begin(0, trials)
    saved(exp, janitor.get_state())  # snapshot 1 names a/1, and reaches storage
    trials[0] = make_trial(exp, "a", 3)
    janitor.on_step_begin(1, trials)
    state = janitor.get_state()  # snapshot 2 names a/3; its sync has not begun
    # Storage shows snapshot 1 only: the sync that wrote it may still be running.
    assert checkpoints(exp, "a") == [f"checkpoint_{i:06d}" for i in range(4)]
    saved(exp, state)  # snapshot 2's sync begins: snapshot 1's has finished
    janitor.get_state()
    # Everything older than what snapshot 1 named goes; a/1 stays: it is the one that
    # storage may still name until snapshot 2 is known to be complete.
    assert checkpoints(exp, "a") == ["checkpoint_000001", "checkpoint_000002",
                                     "checkpoint_000003"]
    janitor.on_experiment_end(trials)  # after Ray's last, awaited snapshot
    assert checkpoints(exp, "a") == ["checkpoint_000003"]


def test_janitor_state_pickles_without_trials_and_keeps_counting_after_restore(tmp_path):
    import pickle

    from search.record.checkpoint_janitor import CheckpointJanitor

    janitor = CheckpointJanitor()
    janitor.on_step_begin(0, [make_trial(tmp_path, "a", 0)])
    state = janitor.get_state()
    restored = pickle.loads(pickle.dumps(janitor))
    assert restored._trials == [] and restored._noted == {}
    restored.set_state(state)
    assert restored.get_state()["checkpoint_janitor_snapshot"] == 2
