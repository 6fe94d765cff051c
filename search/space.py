"""The Optuna search space over Adam's hyperparameters, and how a sample becomes a trial.

Sampled names are the ones a reader of the Adam paper expects, except that beta2 is
searched as `one_minus_beta2` on a log scale: its useful values (0.9, 0.99, 0.999,
0.9999) are orders of magnitude apart in 1 - beta2, not in beta2.
"""

from __future__ import annotations

from typing import Any

import optuna

from search.config import OptimizerConfig, SearchConfig, SpaceConfig, TrialConfig

NAMES = ("lr", "beta1", "one_minus_beta2", "eps", "weight_decay")


class DefineByRun:
    """An Optuna define-by-run space: suggests the searched values, returns the fixed ones.

    A class rather than a closure because Ray pickles the searcher with its space.
    """

    def __init__(self, space: SpaceConfig) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, float]:
        fixed = {}
        for name in NAMES:
            r = getattr(self.space, name)
            if r.fixed:
                fixed[name] = r.bounds()[0]
            else:
                trial.suggest_float(name, r.low, r.high, log=r.log)
        return fixed


def searched(space: SpaceConfig) -> list[str]:
    """Names of the hyperparameters that are sampled, not fixed."""
    return [n for n in NAMES if not getattr(space, n).fixed]


def optimizer_params(sample: dict[str, Any]) -> dict[str, float]:
    """A sample in Adam's own terms (beta2, not 1 - beta2): the params logged per trial."""
    params = {}
    for name in NAMES:  # in the paper's order: lr, beta1, beta2, eps, weight_decay
        if name in sample:
            value = float(sample[name])
            params["beta2" if name == "one_minus_beta2" else name] = (
                1.0 - value if name == "one_minus_beta2" else value)
    return params


def fmt(value: float) -> str:
    """A value with its real magnitude, short: 0.00506, 2.23e-10, and beta2 as 0.99984
    (three significant digits would round it to 1)."""
    return f"{value:.3g}" if abs(value) < 0.9 else f"{value:.6g}"


def sample_line(params: dict[str, float]) -> str:
    """`lr=0.00506 beta1=0.975863 ...`: a trial's sampled optimizer values."""
    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())


def trial_config(cfg: SearchConfig | TrialConfig, sample: dict[str, Any]) -> TrialConfig:
    """The single-run config of one trial: the base config with the sample's optimizer."""
    base = cfg.trial() if isinstance(cfg, SearchConfig) else cfg
    values = base.optimizer.model_dump() | optimizer_params(sample)
    return base.model_copy(update={"optimizer": OptimizerConfig(**values)})
