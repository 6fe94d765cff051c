"""Where MLflow keeps a search, as every command names it: the tracking URI (checked,
and redacted before it is printed or logged), the champion's names in the registry,
and the settings that keep MLflow quiet and safe.

Light on purpose: imports neither Ray nor MLflow, so `search.run`, `search.deploy` and
`search.serve` can refuse bad input in a second, before they load either.
"""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from search.config import ConfigError

MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")
CHAMPION = "champion"  # the registry alias of a search's best model
# Beside the logged model, under the champion trial's run: the weights and how to rebuild
# the network and its data, so `search.deploy` can rebuild and check it.
CHAMPION_CHECKPOINT = "champion/checkpoint.pt"
REDACTED = "***"  # stands for user:password in a printed or logged tracking URI
DATABASE_ENGINES = ("postgresql", "mysql", "sqlite", "mssql")  # mlflow.store.db.db_types
# Schemes MLflow 3 has tracking and model-registry stores for ("" and "file": a local
# folder). Listed here so a bad URI is refused without importing MLflow (1 s) before Ray
# starts; tests/test_tracking.py checks each against MLflow's own registries.
TRACKING_SCHEMES = ("", "file", *DATABASE_ENGINES, "http", "https", "databricks")
REGISTRY_SCHEMES = ("", "file", *DATABASE_ENGINES, "http", "https", "databricks")


def mlflow_settings() -> None:
    """MLflow quiet and safe for a command's output (a user's own setting wins)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow prints run links with the full tracking URI, user and password included.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def redact(uri: str) -> str:
    """A tracking URI safe to print: user and password removed."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{REDACTED}@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def uri_scheme(uri: str) -> str:
    """MLflow's name for a store URI's scheme: `postgresql+psycopg2://` is `postgresql`."""
    scheme = urlsplit(uri).scheme.lower()
    return next((db for db in DATABASE_ENGINES if scheme.startswith(db)), scheme)


def check_tracking_uri(uri: str, register: bool) -> None:
    """Refuse, before anything runs or is written, a tracking URI that MLflow cannot use
    (as a model registry too, when the champion is to be registered), or an http(s)
    server that does not answer now."""
    scheme = uri_scheme(uri)
    for what, schemes in (("tracking", TRACKING_SCHEMES),
                          *([("model registry", REGISTRY_SCHEMES)] if register else [])):
        if scheme not in schemes:
            raise ConfigError(
                f"mlflow.tracking_uri {redact(uri)}: MLflow has no {what} store for "
                f"scheme {scheme!r}; use one of " + ", ".join(repr(s) for s in schemes if s)
                + " or a local path")
    if scheme not in ("http", "https"):
        return
    parts = urlsplit(uri)
    if not parts.hostname:
        raise ConfigError(f"mlflow.tracking_uri {redact(uri)}: no host")
    bare = urlunsplit(parts._replace(
        netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    try:
        urllib.request.urlopen(bare.rstrip("/") + "/health", timeout=5).close()
    except (OSError, ValueError) as e:
        raise ConfigError(f"mlflow.tracking_uri {redact(uri)}: unreachable "
                          f"({getattr(e, 'reason', e)})") from None


def local_tracking_uri() -> str:
    """`mlflow.db` in the working directory: where a search tracks unless told otherwise."""
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else `mlflow.db` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()


def existing_store(uri: str, field: str = "--tracking-uri") -> str:
    """A sqlite URI made absolute (a replica or trial may run in another working
    directory), and refused if the database does not exist: MLflow would create an empty
    one, and a command that only reads must not write."""
    if not uri.startswith("sqlite:///"):
        return uri
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    if not db.is_file():
        raise ConfigError(f"{field} {uri}: no such database")
    return f"sqlite:///{db}"


def registered_version(model_uri: str, tracking_uri: str, label: str):
    """(MlflowClient, ModelVersion) of `models:/NAME@alias` or `models:/NAME/VERSION`, or a
    ConfigError that starts with `label` (the argument as the user gave it)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    match = MODEL_URI.fullmatch(model_uri)
    if match is None:
        raise ConfigError(f"{label}: expected models:/NAME@alias or models:/NAME/VERSION")
    name, alias, number = match["name"], match["alias"], match["version"]
    client = MlflowClient(tracking_uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ConfigError(f"{label}: no registered model {name!r} at "
                          f"{redact(tracking_uri)}") from None
    try:
        version = (client.get_model_version_by_alias(name, alias) if alias
                   else client.get_model_version(name, number))
    except MlflowException:
        what = f"alias {alias!r}" if alias else f"version {number}"
        raise ConfigError(f"{label}: model {name!r} has no {what}") from None
    return client, version


@contextmanager
def reopened(client, run_id: str) -> Iterator[None]:
    """`mlflow.start_run(run_id=...)` on an ended run, for logging a model under it, that
    leaves the run as it ended: status and end time (a trial run's duration stays its
    training's, not the time until the champion was logged)."""
    import mlflow

    info = client.get_run(run_id).info
    with mlflow.start_run(run_id=run_id):
        yield
    if info.end_time:
        client.set_terminated(run_id, info.status, end_time=info.end_time)


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default


def ui_link(base: str, experiment_id: str) -> str:
    """The MLflow UI's page of an experiment's training runs. MLflow 3's UI opens an
    experiment in its GenAI view (traces) unless asked for the machine-learning one."""
    if not experiment_id:
        return base
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
