"""Hyperparameter search for deep-learning training: Ray Tune, Optuna, ASHA and MLflow.

    from search import run_search
    result = run_search("conf/digits.yaml", ["search.num_samples=4"])
    result.best_config, result.trials, result.champion_uri

`run_search`, `SearchResult` (search/run.py) and `ConfigError` (search/config.py) are
imported on first use: trial processes import `search.*` modules without paying for the
driver's imports.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "SearchResult", "run_search"]


def __getattr__(name: str) -> Any:
    if name in ("run_search", "SearchResult"):
        from search import run

        return getattr(run, name)
    if name == "ConfigError":
        from search.config import ConfigError

        return ConfigError
    raise AttributeError(f"module 'search' has no attribute {name!r}")
