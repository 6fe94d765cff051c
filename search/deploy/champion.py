"""Find the champion a deploy starts from, and rebuild it as the search trained it.

A search registers its best checkpoint as `NAME@champion` and logs, beside the MLflow
model, the weights with the recipe to rebuild the network and its data
(`search.record.results.CHAMPION_CHECKPOINT`). From that the champion is rebuilt exactly: the
user's plug-in network included, with the normalising wrapper, on the search's own
train/validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search import config as config_
from search.config import ConfigError, TrialConfig
from search.record.promotion import Judged
from search.record.store import (
    CHAMPION,
    CHAMPION_CHECKPOINT,
    REDACTED,
    default_tracking_uri,
    existing_store,
    registered_version,
)

if TYPE_CHECKING:
    from torch import nn

SAVED_CONFIG = "search.yaml"  # as search.run writes it


@dataclass
class Champion:
    """A registered champion: where it is, and the checkpoint it was registered from."""

    registered_name: str
    version: str
    run_id: str  # the champion trial's MLflow run
    parent_run_id: str | None  # the search's run
    trial_id: str | None
    tracking_uri: str
    state: dict[str, Any]  # model, model_spec, metrics, config (a TrialConfig's JSON)
    judged: Judged | None = None  # what the version was judged on (search.metric, mode, ...)

    @property
    def trial(self) -> TrialConfig:
        return TrialConfig.model_validate(self.state["config"])

    @property
    def val_acc(self) -> float | None:
        return self.state["metrics"].get("val_acc")

    def score(self) -> str:
        """`val_acc 0.9916`: what the champion was judged on, and its value."""
        metric = self.judged.metric if self.judged else "val_acc"
        value = self.state["metrics"].get(metric)
        return f"{metric} {value:.4f}" if isinstance(value, float) else f"{metric} unknown"

    def model(self) -> nn.Module:
        """The trained network in eval mode, taking images scaled to [0, 1]."""
        from search import user_code
        from search.trial.trainer import deployable

        if self.trial.code:  # a plug-in network: import it from where the search found it
            user_code.use_folders(self.trial.code)
        return deployable(self.state)


def model_uri_of(source: str, tracking_uri: str | None) -> tuple[str, str, dict[str, Any]]:
    """SOURCE as (models:/ URI, tracking URI, the search's deploy section)."""
    if source.startswith("models:/"):
        return source, tracking_uri or default_tracking_uri(), {}
    folder = Path(source)
    if not (folder / SAVED_CONFIG).is_file():
        raise ConfigError(f"SOURCE {source}: neither a search folder (no {SAVED_CONFIG}) "
                          "nor a models:/NAME@alias URI")
    saved = config_.read_yaml(folder / SAVED_CONFIG)
    mlflow = saved.get("mlflow") or {}
    name = mlflow.get("register_as")
    if not name:
        raise ConfigError(f"SOURCE {source}: no champion: the search registered no model "
                          "(mlflow.register_as was not set)")
    uri = tracking_uri or mlflow.get("tracking_uri") or default_tracking_uri()
    if REDACTED in uri:
        raise ConfigError(f"SOURCE {source}: the tracking URI's credentials are not stored; "
                          "pass --tracking-uri")
    return f"models:/{name}@{CHAMPION}", uri, saved.get("deploy") or {}


def resolve(model_uri: str, tracking_uri: str, source: str) -> Champion:
    """The registered version `model_uri` names, with its champion checkpoint."""
    from mlflow.exceptions import MlflowException

    tracking_uri = existing_store(tracking_uri)
    client, version = registered_version(model_uri, tracking_uri, f"SOURCE {source}")
    name = version.name
    try:
        path = client.download_artifacts(version.run_id, CHAMPION_CHECKPOINT)
    except (MlflowException, OSError):
        raise ConfigError(f"SOURCE {source}: version {version.version} of {name!r} has no "
                          f"{CHAMPION_CHECKPOINT}: it was not registered by search.run") from None
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    tags = client.get_run(version.run_id).data.tags
    return Champion(name, str(version.version), version.run_id, tags.get("mlflow.parentRunId"),
                    tags.get("trial_id"), tracking_uri, state, Judged.of(version.tags or {}))
