"""New hyperparameters on a loaded optimizer, its Adam state kept.

Population-based training (issue 26) continues a member from its donor's checkpoint with
explored values of lr, betas, eps and weight decay. `torch.optim.Optimizer.load_state_dict`
brings back the donor's values with its state, so after loading, `retune` writes the
explored ones into the param groups. The moments, step counts and (int8 state) codes and
scales stay as loaded; so does the schedule's position: the learning rate keeps the
schedule's current factor, applied to the new base rate.

A plain resume calls it too, with the values the checkpoint was trained with: every
value then equals what it replaces and nothing changes, bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from search.config import OptimizerConfig

# Where torch's schedules keep a rate of the group: the current one, and those the
# schedule computes it from (LambdaLR and CosineAnnealingLR: initial_lr; OneCycleLR also
# max_lr and min_lr). All scale with the base rate.
RATE_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


def base_rate(group: dict[str, Any]) -> float:
    """The configured learning rate a group's schedule runs from: OneCycleLR's peak
    (`max_lr`, which the config's lr sets), else the schedule's `initial_lr`, else the
    group's `lr` (no schedule)."""
    return float(group.get("max_lr", group.get("initial_lr", group["lr"])))


def hyperparameters(opt: torch.optim.Optimizer) -> dict[str, float]:
    """The first group's lr (base rate), beta1, beta2, eps and weight decay."""
    g = opt.param_groups[0]
    b1, b2 = g["betas"]
    return {"lr": base_rate(g), "beta1": float(b1), "beta2": float(b2),
            "eps": float(g["eps"]), "weight_decay": float(g["weight_decay"])}


def retune(opt: torch.optim.Optimizer, schedule: Any, cfg: OptimizerConfig) -> None:
    """Give every param group of `opt` the config's lr, betas, eps and weight decay,
    leaving its state alone. The schedule (a torch LR scheduler over `opt`) keeps its
    position: each rate of a group, and the schedule's `base_lrs`, is scaled by the new
    base rate over the old one."""
    for i, group in enumerate(opt.param_groups):
        old = base_rate(group)
        if cfg.lr != old:
            scale = cfg.lr / old
            for key in RATE_KEYS:
                if key in group:
                    group[key] = group[key] * scale
            if schedule is not None and hasattr(schedule, "base_lrs"):
                # A new list: after load_state_dict the schedule's is the checkpoint's own.
                schedule.base_lrs = [b * scale if j == i else b
                                     for j, b in enumerate(schedule.base_lrs)]
        if tuple(group["betas"]) != (cfg.beta1, cfg.beta2):
            group["betas"] = (cfg.beta1, cfg.beta2)
        if group["eps"] != cfg.eps:
            group["eps"] = cfg.eps
        if group["weight_decay"] != cfg.weight_decay:
            group["weight_decay"] = cfg.weight_decay
