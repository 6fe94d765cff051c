"""The Optuna search space, and how a sample becomes a trial.

A space has the five Adam keys by their short names and any field of a trial's config by
its dotted path (`train.batch_size`, `model.kwargs.width`); search/space_rules.py checks
it. Sampled names are the ones a reader of the Adam paper expects, except that beta2 is
searched as `one_minus_beta2` on a log scale: its useful values (0.9, 0.99, 0.999,
0.9999) are orders of magnitude apart in 1 - beta2, not in beta2. Dotted keys are
sampled, logged and shown by their path.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from search.config import SearchConfig, SpaceConfig, TrialConfig
from search.space_rules import ADAM_KEYS, Range, check_conditions, put, same_value

NAMES = tuple(ADAM_KEYS)  # lr, beta1, one_minus_beta2, eps, weight_decay


def is_path(name: str) -> bool:
    """Whether a sample's key is a dotted config path (not one of the Adam short names)."""
    return "." in name


def suggest(trial: optuna.Trial, name: str, r: Range) -> Any:
    """Sample one key the way Optuna users know: float, int (both bounds inclusive,
    optionally log or stepped) or categorical."""
    if r.categorical:
        return trial.suggest_categorical(name, r.choices)
    if r.integer:
        return trial.suggest_int(name, int(r.low), int(r.high), step=int(r.step or 1),
                                 log=r.log)
    return trial.suggest_float(name, r.low, r.high, log=r.log, step=r.step)


def holds(r: Range, sample: dict[str, Any]) -> bool:
    """Whether `r`'s `when:` holds for the values sampled so far (a condition on a key that
    was not sampled does not hold)."""
    return all(name in sample and any(same_value(sample[name], v) for v in values)
               for name, values in r.conditions().items())


class DefineByRun:
    """An Optuna define-by-run space: suggests the searched values (a conditional key only
    where its condition holds, so that every sampler sees the true space), returns the
    fixed ones, and stepped floats as written (0.15, not Optuna's low + 3 * step =
    0.15000000000000002; Ray's OptunaSearch puts what this returns over what was
    suggested). A class rather than a closure because Ray pickles the searcher with it."""

    def __init__(self, space: SpaceConfig) -> None:
        self.space = space
        self.keys = space.keys()
        self.order = check_conditions(self.keys)  # each key after those its `when` reads

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        sample: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        for name in self.order:
            r = self.keys[name]
            if not holds(r, sample):
                continue
            if r.fixed:
                fixed[name] = sample[name] = r.candidates()[0]
            else:
                sample[name] = suggest(trial, name, r)
                if r.step and not r.integer:
                    fixed[name] = sample[name] = float(f"{sample[name]:.12g}")
        return fixed


def searched(space: SpaceConfig) -> list[str]:
    """Names of the keys that are sampled, not fixed, in the space's order."""
    return [n for n, r in space.keys().items() if not r.fixed]


def trial_params(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample as logged per trial: Adam's values in Adam's own terms (beta2, not
    1 - beta2) in the paper's order, then the dotted paths as sampled."""
    params: dict[str, Any] = {}
    for name in NAMES:
        if name in sample:
            value = float(sample[name])
            params["beta2" if name == "one_minus_beta2" else name] = (
                1.0 - value if name == "one_minus_beta2" else value)
    return params | {k: v for k, v in sample.items() if is_path(k)}



def fmt(value: Any) -> str:
    """A value with its real magnitude, short: 0.00506, 2.23e-10, and beta2 as 0.99984
    (three significant digits would round it to 1); whole numbers whole, categories as
    their YAML text (onecycle, true, null)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.9 else f"{value:.6g}"
    return str(value)


def short_names(names: list[str]) -> dict[str, str]:
    """A short label per name: a path's last part (`batch_size`), or the whole path where
    two paths end alike (`model.kwargs.width`, `data.kwargs.width`)."""
    last = [n.rsplit(".", 1)[-1] for n in names]
    return {n: s if last.count(s) == 1 else n for n, s in zip(names, last, strict=True)}


def sample_line(params: dict[str, Any]) -> str:
    """`lr=0.00506 beta1=0.975863 ... batch_size=64 schedule=onecycle`: a trial's sample."""
    short = short_names(list(params))
    return " ".join(f"{short[k]}={fmt(v)}" for k, v in params.items())


def trial_config(cfg: SearchConfig | TrialConfig, sample: dict[str, Any]) -> TrialConfig:
    """The single-run config of one trial: the base config with the sample's values at
    their paths (Adam's short names into `optimizer`)."""
    base = cfg.trial() if isinstance(cfg, SearchConfig) else cfg
    raw = base.model_dump(mode="json")
    raw["optimizer"] |= {k: v for k, v in trial_params(sample).items() if not is_path(k)}
    for key, value in sample.items():
        if is_path(key):
            put(raw, key, value)
    return TrialConfig.model_validate(raw)


def distributions(space: SpaceConfig) -> dict[str, BaseDistribution]:
    """Optuna's distribution of each searched key, under the name trials log it by
    (beta2 from 1 - beta2's range): what plots and importances read the params with."""
    out: dict[str, BaseDistribution] = {}
    for name, r in space.keys().items():
        if r.fixed:
            continue
        if name == "one_minus_beta2":  # trials report beta2 itself
            out["beta2"] = FloatDistribution(1 - r.high, 1 - r.low)
        else:
            out[name] = distribution(r)
    return out


def distribution(r: Range) -> BaseDistribution:
    """The Optuna distribution `suggest` samples `r` from."""
    if r.categorical:
        return CategoricalDistribution(r.choices)
    if r.integer:
        return IntDistribution(int(r.low), int(r.high), log=r.log, step=int(r.step or 1))
    return FloatDistribution(r.low, r.high, log=r.log, step=r.step)


def describe(r: Range) -> str:
    """A key in a few words, as the parent run's `space.NAME` param: `log-uniform [a, b]`,
    `int [16, 64] step 8`, `choice [adam, adamw]`, `fixed 0`, `... when schedule=onecycle`."""
    if r.fixed:
        text = f"fixed {fmt(r.candidates()[0])}"
    elif r.categorical:
        text = "choice [" + ", ".join(fmt(c) for c in r.choices) + "]"
    else:
        lo, hi = r.bounds()
        kind = ("int " if r.integer else "") + ("log-uniform" if r.log else "uniform")
        text = f"{kind} [{fmt(lo)}, {fmt(hi)}]" + (f" step {fmt(r.step)}" if r.step else "")
    if r.when:
        text += " when " + ", ".join(f"{k}=" + "|".join(fmt(v) for v in vs)
                                     for k, vs in r.conditions().items())
    return text
