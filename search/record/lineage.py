"""A PBT search's lineage (issue 26): the chain of donors whose weights the winner carries,
and the schedule of values they trained it under.

Each exploit (search/pbt_scheduler.py's `Exploit`) says that `trial`, from `epoch` on,
went on from `donor`'s weights at `epoch` with the values `new`. The winner's epochs
after its last exploit were trained by itself with that exploit's values; the epochs
before were its donor's, and so on back to a member that copied no one: its own first
values from epoch 1. The result is what best.yaml writes as `train.phases`, what the
parent run's description says, and the bold line of the schedules plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from search.config import SearchConfig
from search.space import fmt, trial_config
from search.trial.phases import ADAM


class ExploitLike(Protocol):
    trial: str
    donor: str
    epoch: int
    old: dict[str, Any]
    new: dict[str, Any]


@dataclass(frozen=True)
class Segment:
    """Epochs `first` to `last` of the lineage, trained by `trial` with `values` (a sample:
    the search space's keys)."""

    first: int
    last: int
    trial: str
    values: dict[str, Any]


def first_values(trial: str, current: Mapping[str, Any],
                 exploits: Sequence[ExploitLike]) -> dict[str, Any]:
    """The values `trial` started with: before its first exploit's, else its current ones."""
    mine = [e for e in exploits if e.trial == trial]
    return dict(mine[0].old) if mine else dict(current)


def lineage(winner: str, epochs: int, configs: Mapping[str, Mapping[str, Any]],
            exploits: Sequence[ExploitLike]) -> list[Segment]:
    """The winner's segments, epoch 1 first. `configs`: each member's current sample;
    `exploits` in the order they happened."""
    segments: list[Segment] = []
    trial, last = winner, epochs
    while True:
        before = [e for e in exploits if e.trial == trial and e.epoch < last]
        if not before:
            segments.append(Segment(1, last, trial,
                                    first_values(trial, configs[trial], exploits)))
            return segments[::-1]
        e = before[-1]
        segments.append(Segment(e.epoch + 1, last, trial, dict(e.new)))
        trial, last = e.donor, e.epoch


def phases(cfg: SearchConfig, segments: Sequence[Segment]) -> tuple[dict[str, Any], list[dict]]:
    """best.yaml's content for a lineage: the first segment's sample (the trial config's
    values) and `train.phases`, one per later segment, with Adam's values and the gradient
    clip where it changed."""
    configs = [trial_config(cfg, s.values) for s in segments]
    out: list[dict[str, Any]] = []
    for seg, before, now in zip(segments[1:], configs, configs[1:], strict=False):
        phase: dict[str, Any] = {"epoch": seg.first}
        phase |= {k: getattr(now.optimizer, k) for k in ADAM}
        if now.train.grad_clip != before.train.grad_clip:
            phase["grad_clip"] = now.train.grad_clip
        out.append(phase)
    return segments[0].values, out


def describe(segments: Sequence[Segment], shown: Sequence[str]) -> str:
    """`epochs 1-2: trial a (lr 0.003, beta1 0.9); epoch 3: trial b (lr 0.0012, ...)`"""
    def values(v: Mapping[str, Any]) -> str:
        return ", ".join(f"{k} {fmt(v[k])}" for k in shown if k in v)

    def epochs(s: Segment) -> str:
        return f"epoch {s.first}" if s.first == s.last else f"epochs {s.first}-{s.last}"

    return "; ".join(f"{epochs(s)}: trial {s.trial}"
                     + (f" ({values(s.values)})" if values(s.values) else "")
                     for s in segments)


def member_schedule(trial: str, epochs: int, configs: Mapping[str, Mapping[str, Any]],
                    exploits: Sequence[ExploitLike]) -> list[tuple[int, dict[str, Any]]]:
    """The values `trial` itself trained each of its epochs with, `(epoch, sample)` from
    epoch 1 to `epochs` (an exploit at epoch e: the new values from e + 1)."""
    values = first_values(trial, configs[trial], exploits)
    changes = {e.epoch + 1: e.new for e in exploits if e.trial == trial}
    out = []
    for epoch in range(1, epochs + 1):
        values = dict(changes.get(epoch, values))
        out.append((epoch, values))
    return out
