"""What `train.phases` puts in force at an epoch: Adam's values and the gradient clip.

A PBT search's winner trained under a schedule of values (its lineage, issue 26), which
best.yaml writes as phases; `search.train` replays it from scratch, the trainer switching
the optimizer's values at each phase's first epoch (search/trial/retune.py keeps the state
and the schedule's position, as an exploit does).
"""

from __future__ import annotations

from search.config import OptimizerConfig, TrialConfig

ADAM = ("lr", "beta1", "beta2", "eps", "weight_decay")


def optimizer_at(cfg: TrialConfig, epoch: int) -> OptimizerConfig:
    """The optimizer config in force at `epoch`: the config's, with the values of every
    phase begun by then."""
    values: dict[str, float] = {}
    for phase in cfg.train.phases:
        if phase.epoch <= epoch:
            values |= {k: getattr(phase, k) for k in ADAM if k in phase.model_fields_set}
    return cfg.optimizer.model_copy(update=values) if values else cfg.optimizer


def grad_clip_at(cfg: TrialConfig, epoch: int) -> float | None:
    """The gradient clip in force at `epoch` (None: no clipping)."""
    clip = cfg.train.grad_clip
    for phase in cfg.train.phases:
        if phase.epoch <= epoch and "grad_clip" in phase.model_fields_set:
            clip = phase.grad_clip
    return clip


def starts(cfg: TrialConfig, epoch: int) -> bool:
    """Whether a phase begins at `epoch`."""
    return any(phase.epoch == epoch for phase in cfg.train.phases)
