"""Population-based training's explore step over this project's search space (issue 26).

When a weak member copies a strong one (its weights and Adam state: search/trial/retune.py),
it continues with the donor's sample explored: every continuous key moved by one of the
perturbation factors (multiplied on a log range, so that 1 - beta2 and lr move by orders
of magnitude alike; shifted by (factor - 1) of the range's width on a linear one), integer
keys rounded and stepped keys put back on their grid, each clipped to its bounds; with
`resample_probability` (and always for a categorical key) a key is drawn afresh from its
range instead. Conditional keys follow their condition: one whose condition no longer
holds is dropped, one that now holds is drawn. Pure functions of the sample and a seeded
`random.Random`, so a resumed search that restores the stream makes the same choices.

Only what can change while training explores (`explorable`): Adam's values and the
gradient clip. The rest is what the weights were trained with, and stays the donor's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from search.config import SpaceConfig
from search.space import holds
from search.space_rules import Range, check_conditions, explorable

__all__ = ["draw", "explorable", "explore", "fit", "perturb"]


def draw(r: Range, rng: random.Random) -> Any:
    """A fresh value of `r`, as Optuna's random sampler draws it: uniform on its scale
    (log-uniform on a log range), on its grid where it has a step."""
    if r.fixed:
        return r.candidates()[0]
    if r.categorical:
        return rng.choice(r.choices)
    lo, hi = r.bounds()
    if r.log:
        return fit(r, math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return fit(r, rng.uniform(lo, hi))


def fit(r: Range, value: float) -> float | int:
    """`value` clipped to `r`'s bounds, on its grid (stepped), whole (int)."""
    lo, hi = r.bounds()
    value = min(max(value, lo), hi)
    if r.step:
        value = lo + round((value - lo) / r.step) * r.step
        value = min(value, hi)
        value = float(f"{value:.12g}")  # as written (0.15), as DefineByRun returns it
    if r.integer:
        return int(round(value))
    return value


def perturb(r: Range, value: float, factor: float) -> float | int:
    """`value` moved by `factor`: times it on a log range, by (factor - 1) of the width
    on a linear one; clipped and on the grid."""
    lo, hi = r.bounds()
    moved = value * factor if r.log else value + (factor - 1.0) * (hi - lo)
    return fit(r, moved)


def explore(sample: dict[str, Any], space: SpaceConfig, rng: random.Random,
            factors: tuple[float, ...] = (1.2, 0.8), resample_probability: float = 0.25,
            keep: Callable[[str], bool] = lambda name: False,
            ) -> tuple[dict[str, Any], dict[str, str]]:
    """The donor's `sample` explored for the member that copies it: the new sample, and
    what happened to each key (`* 1.2`, `resample`, `new`; a dropped key is absent).
    Keys for which `keep` is true keep the donor's value (what the weights were trained
    with: a model's width, the data, the schedule)."""
    keys = space.keys()
    new: dict[str, Any] = {}
    how: dict[str, str] = {}
    for name in check_conditions(keys):
        r = keys[name]
        if not holds(r, new):
            continue
        if r.fixed:
            new[name] = r.candidates()[0]
        elif keep(name) and name in sample:
            new[name] = sample[name]
        elif name not in sample:
            new[name], how[name] = draw(r, rng), "new"
        elif r.categorical or rng.random() < resample_probability:
            new[name], how[name] = draw(r, rng), "resample"
        else:
            factor = rng.choice(factors)
            new[name], how[name] = perturb(r, sample[name], factor), f"* {factor:g}"
    return new, how
