"""What a finished search leaves behind: outcomes, best.yaml, the champion model, a summary."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from search import config as config_
from search import space as space_
from search.config import SearchConfig, TrialConfig
from search.record import lineage, plots, schedule_plot
from search.record.progress import sample_line
from search.record.store import CHAMPION_CHECKPOINT, LOCAL_UI, reopened, ui_link
from search.record.tracking import Tracker, error_line, outcome, redact
from search.space import fmt, trial_config, trial_params

if TYPE_CHECKING:
    from ray.tune import ResultGrid

log = logging.getLogger("search")

REGISTRATION_TAG = "search.registration"  # a version's token: see register_once
PACKAGES_MAP_INIT = "_init_packages_to_modules_map"  # in mlflow.utils.requirements_utils
# torch.export is not thread-safe: the champion is exported after the preload's export.
_model_logging = threading.Lock()


@dataclass
class TrialSummary:
    trial_id: str
    outcome: str
    epochs: int
    value: float  # the search metric at the trial's last epoch
    params: dict[str, Any]  # the trial's sample as logged (search.space.trial_params)
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
                                 trial_params(r.config or {}), r, error))
    sign = -1 if cfg.search.mode == "max" else 1

    # Trials that ran every epoch rank first: the best config is one validated at the
    # full budget, not an early-rung number from a pruned trial.
    rank = {"completed": 0, "pruned": 1, "diverged": 2, "failed": 3}

    tie = tie_breaker(cfg.search.metric, cfg.train.task)

    def key(t: TrialSummary) -> tuple:
        ok = math.isfinite(t.value) and rank[t.outcome] < 2
        second = (t.result.metrics or {}).get(tie[0], math.nan) if tie else math.nan
        second = tie[1] * second if ok and math.isfinite(second) else math.inf
        # A trial with no value (stopped before its first epoch) last among its outcome.
        return (rank[t.outcome], sign * t.value if ok else math.inf, second)

    return sorted(rows, key=key)  # stable: a full tie keeps the order trials started in


def outcome_counts(rows: list[TrialSummary]) -> str:
    """`5 completed, 3 pruned, 0 diverged, 0 failed`"""
    return ", ".join(f"{sum(r.outcome == k for r in rows)} {k}"
                     for k in ("completed", "pruned", "diverged", "failed"))


def tie_breaker(metric: str, task: str | None = None) -> tuple[str, int] | None:
    """How trials equal on `metric` are ordered: (other metric, sign to sort ascending).
    Image classification: val_acc ties (common: 0.98886 is 356/360 digits) go to the lower
    val_loss, the more confident model; val_loss ties to the higher val_acc. A training task
    (`train.task`) names its own in `tie_break = ("val_other", "min" or "max")`. Otherwise,
    and for other metrics, start order."""
    if task is None:
        return {"val_acc": ("val_loss", 1), "val_loss": ("val_acc", -1)}.get(metric)
    tie = getattr(config_.import_attribute(task, "train.task"), "tie_break", None)
    if not tie or tie[0] == metric:
        return None
    return tie[0], 1 if tie[1] == "min" else -1


def tie_rule(metric: str, mode: str, task: str | None = None) -> str:
    """The ranking rule in words, for the search's description."""
    tie = tie_breaker(metric, task)
    then = f"the {'lower' if tie[1] > 0 else 'higher'} {tie[0]}, then " if tie else ""
    return (f"ranked by {metric} ({mode}), trials that ran every epoch first; ties go to "
            f"{then}the trial started first")


def second_metric(cfg: SearchConfig) -> str:
    """The metric shown beside the search's in the tables: an image classifier's val_loss,
    or what a task breaks ties on (else the search's own again)."""
    if cfg.train.task is None:
        return "val_loss"
    tie = tie_breaker(cfg.search.metric, cfg.train.task)
    return tie[0] if tie else cfg.search.metric


def table(rows: list[TrialSummary], metric: str) -> Any:
    """Every trial, best first, as a pandas DataFrame when pandas is there, else dicts."""
    records = [{"trial_id": r.trial_id, "outcome": r.outcome, "epochs": r.epochs,
                metric: r.value, **r.params, "error": r.error} for r in rows]
    try:
        import pandas
    except ImportError:
        return records
    return pandas.DataFrame.from_records(records)


def write_best_yaml(cfg: SearchConfig, best: TrialSummary, path: Path,
                    segments: Sequence[lineage.Segment] = ()) -> str:
    """The winner as a complete single-run config for `python -m search.train`; under PBT
    (`segments`: its lineage) the values it started with and `train.phases`, the schedule
    its weights were trained under."""
    values, later = lineage.phases(cfg, segments) if segments else (best.result.config, [])
    trial = trial_config(cfg, values)
    if later:
        raw = trial.model_dump(mode="json")
        raw["train"]["phases"] = later
        trial = TrialConfig.model_validate(raw)
    text = (
        f"# Best trial {best.trial_id} of search {cfg.name!r}: "
        f"{cfg.search.metric} {best.value:.4f} after {best.epochs} epochs.\n"
        + (f"# PBT: its weights' lineage, {lineage.describe(segments, ())}; train.phases "
           f"replays its schedule.\n" if later else "")
        + f"# Retrain it: python -m search.train {path}\n" + config_.dump(trial)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


class PreloadTheEnd(tune.Callback):
    """Pays, in the background once the trials run, the one-time costs of what the end of
    the search does, so the end does not wait for them and the trial processes warming up
    at the start do not compete with them:

    - the plots' libraries (matplotlib, and Optuna's importance evaluators with
      scikit-learn): about 2.4 s of imports on 2 cores (search/record/plots.py);
    - with `model_logging`, logging the champion (about 3 s): importing mlflow.pytorch,
      torch.export's first trace (later ones take milliseconds), and MLflow's map of
      installed packages, which it reads to check the model's pip requirements.
    """

    def __init__(self, model_logging: bool) -> None:
        self.model_logging = model_logging
        self.started = False

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if not self.started:
            self.started = True
            threading.Thread(target=self._preload, daemon=True).start()

    def _preload(self) -> None:
        plots.preload()
        if self.model_logging:
            preload_model_logging()


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
                      trial: TrialConfig, description: str = "") -> int:
    """Log the best checkpoint as an MLflow PyTorch model under the best trial's run and
    register it as `name`; the new version's alias (champion or challenger) is
    search/record/promotion.py's to set; a trial is registered once (a resumed search whose
    best trial has a version gets that version). The weights, `trial` (the winner's config) and
    the model spec go beside it (CHAMPION_CHECKPOINT). The version is made only once all
    of them are stored: an upload that fails (a full artifact store) raises, and leaves no
    version pointing at half a model."""

    import mlflow
    import torch

    from search.trial.trainable import load_checkpoint, result_checkpoint
    from search.trial.trainer import deployable

    client = tracker.client
    run_id = tracker.children[best.trial_id]
    # A resumed or extended search whose best trial was registered already: that version.
    known = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if known:
        return min(int(v.version) for v in known)
    state = load_checkpoint(result_checkpoint(best.result))
    spec = state["model_spec"]
    model = deployable(state)
    # The signature's example: a task's own `example_input()`, else two images in [0, 1].
    example = (spec["example"] if "task" in spec else
               torch.rand(2, spec["in_channels"], spec["image_size"], spec["image_size"]))
    # mlflow.pytorch.log_model writes through the global tracking URI: point it at the
    # search's store for the call, and give the caller's back (run_search runs in the
    # user's process, where another store may be in use).
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        info = _log_champion(client, run_id, model, name, example, state, spec, trial)
    finally:
        mlflow.set_tracking_uri(previous)
    version = int(info.version)  # its alias: promotion.promote decides
    if description:
        client.update_model_version(name, str(version), description=description)
    return version


def _log_champion(client, run_id: str, model, name: str, example, state: dict, spec: dict,
                  trial: TrialConfig):
    """The champion model and its checkpoint beside it, logged under the trial's run, then
    registered: the new model version."""
    import tempfile

    import mlflow
    import torch

    with _model_logging, reopened(client, run_id):
        logged = mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example.numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, Path(CHAMPION_CHECKPOINT).name)
            torch.save({"model": state["model"], "model_spec": spec,
                        "metrics": state["metrics"], "config": trial.model_dump(mode="json")},
                       path)
            mlflow.log_artifact(str(path), str(Path(CHAMPION_CHECKPOINT).parent))
        return register_once(client, logged.model_uri, name)  # last: every part is stored


def register_once(client, model_uri: str, name: str):
    """`mlflow.register_model`, exactly once. MLflow's HTTP client retries a request whose
    answer was lost (a timeout, a 5xx), POSTs included, so a version the server made may be
    made again (seen once in a test under load: versions 1 and 2 of one model). Each call
    tags its version with a token; the lowest version bearing it is kept, any other is
    deleted, and a call that raised after the server made the version still finds it."""
    import uuid

    import mlflow

    token = uuid.uuid4().hex
    try:
        mlflow.register_model(model_uri, name, tags={REGISTRATION_TAG: token})
    except Exception:
        if not _versions_with(client, name, token):
            raise
    first, *again = _versions_with(client, name, token)
    for version in again:
        client.delete_model_version(name, version.version)
    return first


def _versions_with(client, name: str, token: str) -> list:
    found = client.search_model_versions(f"name = '{name}' and tags.`{REGISTRATION_TAG}` = "
                                         f"'{token}'")
    return sorted(found, key=lambda v: int(v.version))


def curves(rows: list[TrialSummary], metric: str) -> list[plots.TrialCurve]:
    """Each trial's metric per epoch, from its result.json (an epoch repeated after a retry
    from a checkpoint counts once: its last value)."""
    out = []
    for r in rows:
        frame = getattr(r.result, "metrics_dataframe", None)
        by_epoch: dict[int, float] = {}
        if frame is not None and {"epoch", metric} <= set(frame.columns):
            for epoch, value in zip(frame["epoch"], frame[metric], strict=True):
                if epoch == epoch and value == value:  # not NaN (an error result has neither)
                    by_epoch[int(epoch)] = float(value)
        epochs = sorted(by_epoch)
        out.append(plots.TrialCurve(r.trial_id, r.outcome, epochs,
                                    [by_epoch[e] for e in epochs], r.params))
    return out


def draw(rows: list[TrialSummary], cfg: SearchConfig, best_id: str | None,
         folder: Path, pbt: PBTRecord | None = None) -> plots.Plots:
    """The search's pictures in `folder` (learning curves, metric against each searched
    hyperparameter, importances), with the importances; under PBT (`pbt`), the learning
    curves and the members' schedules instead. Never raises: a picture that cannot be
    drawn is left out and logged."""
    distributions = space_.distributions(cfg.space)
    log_params = {n for n, d in distributions.items() if getattr(d, "log", False)}
    folder.mkdir(parents=True, exist_ok=True)
    drawn = plots.draw_all(
        curves(rows, cfg.search.metric), cfg.search.metric, cfg.search.mode, best_id,
        log_params, distributions, folder,
        values_vary="" if pbt is None else
        "no importances or metric-against-value plots under PBT: a member's values change "
        "as it trains (plots/pbt_schedules.png shows them)")
    if pbt is not None:
        path = folder / "pbt_schedules.png"
        try:
            schedule_plot.draw(pbt.schedules, pbt.segments, pbt.keys, path).clear()
            drawn.paths["pbt_schedules"] = path
        except Exception:
            log.exception("could not draw %s", path)
    return drawn


@dataclass
class PBTRecord:
    """A PBT search's lineage, for best.yaml, the description and the schedules plot."""

    segments: list[lineage.Segment]  # the winner's
    schedules: dict[str, list[tuple[int, dict[str, Any]]]]  # each member's values per epoch
    keys: list[str]  # the explored keys of the space

    @classmethod
    def of(cls, rows: list[TrialSummary], cfg: SearchConfig, best: TrialSummary,
           exploits: Sequence[lineage.ExploitLike]) -> PBTRecord:
        from search.pbt import explorable

        configs = {r.trial_id: r.result.config for r in rows}
        keys = [k for k, r in cfg.space.keys().items() if explorable(k) and not r.fixed]
        return cls(lineage.lineage(best.trial_id, best.epochs, configs, exploits),
                   {t: lineage.member_schedule(t, cfg.train.epochs, configs, exploits)
                    for t in configs}, keys)

    def line(self) -> str:
        return lineage.describe(self.segments, self.keys)


def _markdown_table(rows: list[TrialSummary], metric: str, limit: int = 10,
                    second: str = "val_loss") -> list[str]:
    names = list(dict.fromkeys(n for r in rows[:limit] for n in r.params))  # conditional keys
    short = space_.short_names(names)
    lines = ["| rank | trial | outcome | epochs | " + f"{metric} | {second} | "
             + " | ".join(short[n] for n in names) + " |", "|" + "---|" * (6 + len(names))]
    for i, r in enumerate(rows[:limit], 1):
        loss = (r.result.metrics or {}).get(second, math.nan)
        values = [fmt(r.params[n]) if n in r.params else "" for n in names]
        lines.append(f"| {i} | {r.trial_id} | {r.outcome} | {r.epochs} | {r.value:.4f} | "
                     f"{loss:.4f} | " + " | ".join(values) + " |")
    return lines


def search_description(rows: list[TrialSummary], cfg: SearchConfig, best: TrialSummary,
                       champion: str | None, best_yaml: Path,
                       importance: str, kept: str = "", stopped: str = "",
                       pbt: PBTRecord | None = None) -> str:
    """The parent run's Markdown description: what was searched, who won and why, how to
    retrain it, where the model is, and the top of the table."""
    second = second_metric(cfg)
    loss = (best.result.metrics or {}).get(second, math.nan)
    lines = [
        f"**Search `{cfg.name}`**: {len(rows)} trials ({outcome_counts(rows)}), "
        f"{cfg.search.sampler} sampler, {cfg.scheduler.name} scheduler, "
        f"{cfg.train.epochs} epochs at most." + (f" Stopped: {stopped}." if stopped else ""),
        "",
        f"**Best**: trial `{best.trial_id}`, {cfg.search.metric} {best.value:.4f} "
        f"({second} {loss:.4f}) after {best.epochs} epochs: {sample_line(best.params)}",
        "",
        f"**Ranking**: {tie_rule(cfg.search.metric, cfg.search.mode, cfg.train.task)}.",
        "",
        f"**Retrain**: `python -m search.train {best_yaml}`",
    ]
    if pbt is not None:
        lines += ["", f"**PBT lineage** (whose weights and values the winner trained with, "
                      f"epoch by epoch; best.yaml's `train.phases` replay it): {pbt.line()}"]
    if champion and kept:
        lines += ["", f"**Model**: `{champion}`: {kept}"]
    elif champion:
        lines += ["", f"**Model**: `{champion}` (the best trial's run is tagged `champion`)"]
    if importance.startswith("importance"):
        lines += ["", "**Hyperparameter " + importance.replace(":", "**:", 1)]
    elif importance:
        lines += ["", f"**Hyperparameter importance**: {importance}"]
    return "\n".join([*lines, "", *_markdown_table(rows, cfg.search.metric, second=second)])


def model_description(cfg: SearchConfig, best: TrialSummary, best_yaml: Path) -> str:
    """The champion model version's Markdown description."""
    return (f"Best trial `{best.trial_id}` of search `{cfg.name}`: {cfg.search.metric} "
            f"{best.value:.4f} after {best.epochs} epochs; {sample_line(best.params)}.\n\n"
            "Input: float32 images `(N, C, H, W)` scaled to [0, 1] (the normalisation is part "
            "of the model); output: logits. `mlflow.pytorch.load_model` returns the exported "
            "graph: call it as it is, no `.eval()`.\n\n"
            f"Retrain: `python -m search.train {best_yaml}`; ONNX: "
            f"`python -m search.deploy {best_yaml.parent}`.")


def print_summary(rows: list[TrialSummary], cfg: SearchConfig, best_yaml: Path | None,
                  tracking_uri: str, experiment_id: str = "", stopped: str = "",
                  importance: str = "", model: str | None = None, kept: str = "") -> None:
    """The search's closing lines, to the `search` logger. `importance`: the importances
    and what they rest on, or why there are none (plots.Plots.importance_line); `model`:
    the registered version's URI; `kept`: why it did not become the champion, if not;
    `stopped`: why the search stopped."""
    log.info("search %s: %d trials: %s", cfg.name, len(rows), outcome_counts(rows))
    if stopped:
        log.info("stopped: %s", stopped)
    log.info("top 5 by %s (%s):", cfg.search.metric, cfg.search.mode)
    for r in rows[:5]:
        log.info("  %s  %-9s epochs %3d  %s %.4f  %s", r.trial_id, r.outcome, r.epochs,
                 cfg.search.metric, r.value, sample_line(r.params))
    failed = [r for r in rows if r.outcome == "failed"]
    for r in failed[:5]:
        log.info("  %s  failed: %s", r.trial_id, r.error)
    if len(failed) > 5:
        log.info("  ... and %d more failed trials", len(failed) - 5)
    if importance:
        log.info("%s", importance)
    if best_yaml is not None:
        log.info("best config: %s  (retrain: python -m search.train %s)", best_yaml, best_yaml)
    if model:
        log.info("model: %s%s", model, f" ({kept})" if kept else "")
    if tracking_uri.startswith("http"):
        log.info("browse the trials: %s", ui_link(redact(tracking_uri), experiment_id))
    else:
        log.info("browse the trials: mlflow ui --backend-store-uri %s --host 127.0.0.1, then "
                 "open %s", tracking_uri, ui_link(LOCAL_UI, experiment_id))
