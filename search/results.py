"""What a finished search leaves behind: outcomes, best.yaml, the champion model, a summary."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from search import config as config_
from search.config import SearchConfig, TrialConfig
from search.progress import sample_line
from search.space import optimizer_params, trial_config
from search.store import CHAMPION, CHAMPION_CHECKPOINT
from search.tracking import Tracker, error_line, outcome, redact

if TYPE_CHECKING:
    from ray.tune import ResultGrid

log = logging.getLogger("search")

PACKAGES_MAP_INIT = "_init_packages_to_modules_map"  # in mlflow.utils.requirements_utils
# torch.export is not thread-safe: the champion is exported after the preload's export.
_model_logging = threading.Lock()


@dataclass
class TrialSummary:
    trial_id: str
    outcome: str
    epochs: int
    value: float  # the search metric at the trial's last epoch
    params: dict[str, float]
    result: Any  # ray.tune.Result
    error: str | None = None  # why a failed trial failed: its error's own line


def summarize(grid: ResultGrid, cfg: SearchConfig) -> list[TrialSummary]:
    """Every trial with how it ended, best first (failed and diverged trials last)."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        how = outcome(m, cfg.train.epochs, error=r.error is not None)
        value = m.get(cfg.search.metric, math.nan)
        trial_id = m.get("trial_id") or Path(r.path).name.removeprefix("trial_")
        error = m.get("error") or (error_line(r.error) if r.error is not None else None)
        rows.append(TrialSummary(trial_id, how, int(m.get("epoch", 0)), float(value),
                                 optimizer_params(r.config or {}), r, error))
    sign = -1 if cfg.search.mode == "max" else 1

    # Trials that ran every epoch rank first: the best config is one validated at the
    # full budget, not an early-rung number from a pruned trial.
    rank = {"completed": 0, "pruned": 1, "diverged": 2, "failed": 3}

    def key(t: TrialSummary) -> tuple:
        ok = math.isfinite(t.value) and rank[t.outcome] < 2
        return (rank[t.outcome], sign * t.value if ok else 0.0)

    return sorted(rows, key=key)


def table(rows: list[TrialSummary], metric: str) -> Any:
    """Every trial, best first, as a pandas DataFrame when pandas is there, else dicts."""
    records = [{"trial_id": r.trial_id, "outcome": r.outcome, "epochs": r.epochs,
                metric: r.value, **r.params, "error": r.error} for r in rows]
    try:
        import pandas
    except ImportError:
        return records
    return pandas.DataFrame.from_records(records)


def write_best_yaml(cfg: SearchConfig, best: TrialSummary, path: Path) -> str:
    """The winner as a complete single-run config for `python -m search.train`."""
    trial = trial_config(cfg, best.result.config)
    text = (
        f"# Best trial {best.trial_id} of search {cfg.name!r}: "
        f"{cfg.search.metric} {best.value:.4f} after {best.epochs} epochs.\n"
        f"# Retrain it: python -m search.train {path}\n" + config_.dump(trial)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


class PreloadModelLogging(tune.Callback):
    """Pays, in the background once the trials run, the one-time costs of logging the
    champion (about 3 s on 2 cores): importing mlflow.pytorch, torch.export's first trace
    (later ones take milliseconds), and MLflow's map of installed packages, which it reads
    to check the model's pip requirements. The end of the search then does not wait for
    them, and the trial processes warming up at the start do not compete with them."""

    def __init__(self) -> None:
        self.started = False

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if not self.started:
            self.started = True
            threading.Thread(target=preload_model_logging, daemon=True).start()


def preload_model_logging() -> None:
    with _model_logging:
        import mlflow.pytorch  # noqa: F401
        import torch
        from mlflow.utils import requirements_utils

        tiny = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Flatten())
        torch.export.export(tiny, (torch.zeros(2, 1, 2, 2),))
        # Private: a missing or renamed function only means this part is not preloaded
        # (tests/test_results.py names it, so a new MLflow that drops it is noticed).
        getattr(requirements_utils, PACKAGES_MAP_INIT, lambda: None)()


def register_champion(tracker: Tracker, best: TrialSummary, name: str,
                      trial: TrialConfig) -> int:
    """Log the best checkpoint as an MLflow PyTorch model under the best trial's run,
    register it as `name` and point the `champion` alias at the new version. The weights,
    `trial` (the winner's config) and the model spec go beside it (CHAMPION_CHECKPOINT)."""
    import tempfile

    import mlflow
    import torch

    from search.trainable import load_checkpoint
    from search.trainer import deployable

    state = load_checkpoint(best.result.checkpoint)
    spec = state["model_spec"]
    model = deployable(state)
    example = torch.rand(2, spec["in_channels"], spec["image_size"], spec["image_size"])
    client = tracker.client
    mlflow.set_tracking_uri(client.tracking_uri)
    run_id = tracker.children[best.trial_id]
    with _model_logging, mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            registered_model_name=name,
            input_example=example.numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, Path(CHAMPION_CHECKPOINT).name)
            torch.save({"model": state["model"], "model_spec": spec,
                        "metrics": state["metrics"], "config": trial.model_dump(mode="json")},
                       path)
            mlflow.log_artifact(str(path), str(Path(CHAMPION_CHECKPOINT).parent))
    version = int(info.registered_model_version)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return version


def print_summary(rows: list[TrialSummary], cfg: SearchConfig, best_yaml: Path | None,
                  tracking_uri: str) -> None:
    """The search's closing lines, to the `search` logger."""
    counts = {k: sum(r.outcome == k for r in rows)
              for k in ("completed", "pruned", "diverged", "failed")}
    log.info("search %s: %d trials: %s", cfg.name, len(rows),
             ", ".join(f"{n} {k}" for k, n in counts.items()))
    log.info("top 5 by %s (%s):", cfg.search.metric, cfg.search.mode)
    for r in rows[:5]:
        log.info("  %s  %-9s epochs %3d  %s %.4f  %s", r.trial_id, r.outcome, r.epochs,
                 cfg.search.metric, r.value, sample_line(r.params))
    failed = [r for r in rows if r.outcome == "failed"]
    for r in failed[:5]:
        log.info("  %s  failed: %s", r.trial_id, r.error)
    if len(failed) > 5:
        log.info("  ... and %d more failed trials", len(failed) - 5)
    if best_yaml is not None:
        log.info("best config: %s  (retrain: python -m search.train %s)", best_yaml, best_yaml)
    ui = (f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1"
          if not tracking_uri.startswith("http") else f"open {redact(tracking_uri)}")
    log.info("browse the trials: %s", ui)
