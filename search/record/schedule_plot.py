"""pbt_schedules.png: each PBT member's values per epoch, and the winner's lineage over
them (issue 26). One panel per explored value that varies (lr, beta1, beta2, eps, weight
decay, the gradient clip): a thin step line per member, the values it trained each epoch
with; a thick line, the schedule the winner's weights were trained under, its donors'
epochs included."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from search.record import plots
from search.record.lineage import Segment

LOG_SCALE = {"lr", "eps", "one_minus_beta2", "weight_decay"}


def varying(schedules: Mapping[str, Sequence[tuple[int, dict[str, Any]]]],
            keys: Sequence[str]) -> list[str]:
    """The keys of `keys` whose value is not the same in every member's every epoch."""
    return [k for k in keys
            if len({repr(v.get(k)) for s in schedules.values() for _, v in s}) > 1]


def draw(schedules: Mapping[str, Sequence[tuple[int, dict[str, Any]]]],
         segments: Sequence[Segment], keys: Sequence[str], path: str | Path) -> Any:
    """Draw the panels into `path` (PNG); returns the figure."""
    shown = varying(schedules, keys) or list(keys)[:1]
    fig = plots._new_figure(6.0, 2.2 * len(shown))
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    winner = [(e, seg.values) for seg in segments for e in range(seg.first, seg.last + 1)]
    for ax, key in zip(axes, shown, strict=True):
        for schedule in schedules.values():
            ax.step([e for e, _ in schedule], [v.get(key) for _, v in schedule], where="mid",
                    color="tab:gray", alpha=0.5, linewidth=1)
        ax.step([e for e, _ in winner], [v.get(key) for _, v in winner], where="mid",
                color="tab:red", linewidth=2.5,
                label="winner's lineage" if key == shown[0] else None)
        positive = all(isinstance(v.get(key), (int, float)) and v.get(key) > 0
                       for s in schedules.values() for _, v in s)
        if key in LOG_SCALE and positive:
            ax.set_yscale("log")
        ax.set_ylabel(key)
    axes[0].set_title(f"PBT: {len(schedules)} members' values per epoch")
    axes[0].legend(loc="best", fontsize=8)
    axes[-1].set_xlabel("epoch")
    return plots._save(fig, path)
