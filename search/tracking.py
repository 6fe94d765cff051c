"""MLflow tracking of a search, done from the driver.

One experiment per search name; one parent run per search with the config, the space
and, at the end, the best config, best metric and a top-k table; one child run per
trial nested under it with clean params, per-epoch metrics at `step = epoch` and an
`outcome` tag (completed, pruned, diverged, failed).

Why not Ray's `MLflowLoggerCallback`: it makes flat runs, logs pid/timestamp/done as
metrics, uploads no checkpoint, and its tracking URI does not reach trial processes.
Here only the driver writes, every write goes through a queue that is retried in
order (a tracking server that restarts mid-search loses nothing), and each epoch is
logged once per trial even when a trial is replayed from a checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from search.space import optimizer_params

log = logging.getLogger(__name__)

METRICS = ("train_loss", "val_loss", "val_acc", "lr", "epoch_s", "images_per_s")
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
SEARCH_TAG = "search.dir"  # identifies a search's parent run across restarts
DRAIN_S = 300.0  # at the end, how long to wait for a tracking server to come back
RETRY_S = 3.0  # pause between delivery attempts while the tracking server is down
REDACTED = "***"  # stands for user:password in a printed or logged tracking URI


def redact(uri: str) -> str:
    """A tracking URI safe to print: user and password removed."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{REDACTED}@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"optimizer.lr": "0.001", ...} for MLflow params."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def outcome(metrics: dict[str, Any], epochs: int, error: bool) -> str:
    """How a trial ended, from its last result."""
    if error:
        return "failed"
    if metrics.get("diverged"):
        return "diverged"
    return "completed" if metrics.get("epoch", 0) >= epochs else "pruned"


class Tracker:
    """The MLflow side of one search: a parent run and a child run per trial.

    Every write is queued and delivered in order by `flush`; a write that fails
    (server down) stays queued and is retried at the next flush.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.children: dict[str, str] = {}  # trial id -> run id
        self.logged_steps: dict[str, set[int]] = {}  # trial id -> epochs already logged
        self.pending: deque[Callable[[], None]] = deque()
        self._retry_at = 0.0  # after a failure, wait a little before trying again
        self._warned = False

    @classmethod
    def open(cls, client: MlflowClient, experiment: str, search_dir: str, run_name: str,
             params: dict[str, str]) -> Tracker:
        """Find the search's parent run (a resumed search) with its children, or create it."""
        exp = client.get_experiment_by_name(experiment)
        experiment_id = exp.experiment_id if exp else client.create_experiment(experiment)
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{SEARCH_TAG}` = '{search_dir}'", max_results=1
        )
        parent = found[0] if found else None
        if parent is None:
            parent = client.create_run(experiment_id, run_name=run_name,
                                       tags={SEARCH_TAG: search_dir, "role": "search"})
            items = [Param(k, v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
                client.log_batch(parent.info.run_id, params=items[i : i + 100])
        tracker = cls(client, experiment_id, parent.info.run_id)
        tracker._adopt_children()
        return tracker

    def _adopt_children(self) -> None:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
            max_results=10000,
        )
        for run in runs:
            trial_id = run.data.tags.get("trial_id")
            if trial_id:
                self.children[trial_id] = run.info.run_id
                history = self.client.get_metric_history(run.info.run_id, "val_acc")
                self.logged_steps[trial_id] = {m.step for m in history}

    # ------------------------------------------------------------ queued writes

    def submit(self, write: Callable[[], None]) -> None:
        self.pending.append(write)
        self.flush()

    def flush(self) -> bool:
        """Deliver queued writes in order; True when none is left."""
        if self.pending and time.monotonic() < self._retry_at:
            return False
        while self.pending:
            try:
                self.pending[0]()
            except Exception as e:  # server down or restarting: keep it, retry later
                if not self._warned:
                    log.warning("MLflow unreachable, %d writes queued: %s",
                                len(self.pending), type(e).__name__)
                    self._warned = True
                self._retry_at = time.monotonic() + RETRY_S
                return False
            self.pending.popleft()
        self._warned = False
        return True

    def drain(self, timeout_s: float) -> bool:
        """Flush until the queue is empty or `timeout_s` has passed."""
        deadline = time.monotonic() + timeout_s
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(RETRY_S)
        return not self.pending

    # ------------------------------------------------------------ trials

    def start_trial(self, trial_id: str, trial_name: str, params: dict[str, float]) -> None:
        if trial_id in self.children:
            return

        def create() -> None:
            if trial_id in self.children:  # a retried write may already have landed
                return
            run = self.client.create_run(
                self.experiment_id, run_name=trial_name,
                tags={PARENT_TAG: self.parent_run_id, "trial_id": trial_id},
            )
            self.children[trial_id] = run.info.run_id
            self.client.log_batch(run.info.run_id,
                                  params=[Param(k, repr(v)) for k, v in params.items()])

        self.logged_steps.setdefault(trial_id, set())
        self.submit(create)

    def log_epoch(self, trial_id: str, metrics: dict[str, Any]) -> None:
        step = int(metrics["epoch"])
        steps = self.logged_steps.setdefault(trial_id, set())
        if step in steps:  # replayed after a retry: never log an epoch twice
            return
        steps.add(step)
        now = int(time.time() * 1000)
        batch = [Metric(k, float(metrics[k]), now, step) for k in METRICS if k in metrics]

        self.submit(lambda: self.client.log_batch(self.children[trial_id], metrics=batch))

    def tag_trial(self, trial_id: str, key: str, value: str) -> None:
        self.submit(lambda: self.client.set_tag(self.children[trial_id], key, value))

    def end_trial(self, trial_id: str, how: str) -> None:
        status = "FAILED" if how == "failed" else "FINISHED"

        def end() -> None:
            run_id = self.children[trial_id]
            self.client.log_batch(run_id, tags=[RunTag("outcome", how)])
            self.client.set_terminated(run_id, status)

        self.submit(end)

    # ------------------------------------------------------------ the search

    def fail_search(self) -> None:
        """End the parent run as FAILED (no trial produced a model), never left RUNNING."""
        self.submit(lambda: self.client.set_terminated(self.parent_run_id, "FAILED"))

    def finish(self, best: dict[str, Any], top: list[dict[str, Any]], best_yaml: str,
               status: str = "FINISHED") -> None:
        run_id = self.parent_run_id

        def end() -> None:
            params = [Param(f"best.{k}", str(v)) for k, v in best["params"].items()]
            metrics = [Metric(f"best_{best['metric']}", float(best["value"]),
                              int(time.time() * 1000), 0)]
            self.client.log_batch(run_id, metrics=metrics, params=params,
                                  tags=[RunTag("best_trial_id", best["trial_id"])])
            self.client.log_text(run_id, best_yaml, "best.yaml")
            columns = {k: [row[k] for row in top] for k in top[0]} if top else {}
            self.client.log_table(run_id, columns, "top_trials.json")
            self.client.set_terminated(run_id, status)

        self.submit(end)


class TrackingCallback(tune.Callback):
    """Routes Tune's trial events to a Tracker.

    Holds only plain values until `setup`, because Tune pickles its callbacks with the
    experiment and unpickles them on `Tuner.restore`; `setup` then finds the parent run
    and the children the interrupted driver had logged.
    """

    def __init__(self, tracking_uri: str, experiment: str, search_dir: str, run_name: str,
                 params: dict[str, str], epochs: int) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.search_dir = search_dir
        self.run_name = run_name
        self.params = params
        self.epochs = epochs
        self.tracker: Tracker | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "tracker": None}

    def setup(self, **info) -> None:
        client = MlflowClient(self.tracking_uri)
        self.tracker = Tracker.open(client, self.experiment, self.search_dir, self.run_name,
                                    self.params)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.tracker.start_trial(trial.trial_id, str(trial), optimizer_params(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "epoch" not in result:
            return
        if result.get("iterations_since_restore") == 1 and "node_id" in result:
            self.tracker.tag_trial(trial.trial_id, "node_id", result["node_id"])
        if result.get("iterations_since_restore") == 1 and result["epoch"] > 1:
            # The first result after a retry, continuing from a checkpoint.
            self.tracker.tag_trial(trial.trial_id, "resumed_from_epoch", str(result["epoch"] - 1))
        self.tracker.log_epoch(trial.trial_id, result)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.tracker.tag_trial(trial.trial_id, "retries", str(trial.num_failures))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        self.tracker.end_trial(trial.trial_id, outcome(last, self.epochs, error=False))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.tracker.end_trial(trial.trial_id, "failed")

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.tracker.pending:  # retry writes that failed while the server was down
            self.tracker.flush()

    def on_experiment_end(self, trials, **info) -> None:
        if not self.tracker.drain(timeout_s=DRAIN_S):
            log.warning("%d MLflow writes could not be delivered", len(self.tracker.pending))
