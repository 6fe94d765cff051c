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
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ray import tune

from search.config import SearchConfig
from search.record import sqlite_schema

# Re-exported: the names of the MLflow store as every command uses them.
from search.record.store import (  # noqa: F401
    REDACTED,
    REGISTRY_SCHEMES,
    TRACKING_SCHEMES,
    check_tracking_uri,
    mlflow_settings,
    redact,
)
from search.space import NAMES, fmt, optimizer_params, sample_line

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

METRICS = ("train_loss", "val_loss", "val_acc", "lr", "epoch_s", "images_per_s")
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
NOTE_TAG = "mlflow.note.content"  # a run's Markdown description in the MLflow UI
SEARCH_TAG = "search.dir"  # identifies a search's parent run across restarts
DRAIN_S = 300.0  # at the end, how long to wait for a tracking server to come back
RETRY_S = 3.0  # pause between delivery attempts while the tracking server is down
def error_line(error: Any) -> str:
    """The line of an error that says what went wrong: the exception's own line, not the
    traceback Ray wraps around it."""
    if error is None:
        return "unknown error"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):  # "ValueError: ..." closes a traceback
        head = line.split(":", 1)[0]
        if head.isidentifier() and (head.endswith(("Error", "Exception", "Missing"))
                                    or head == "KeyboardInterrupt"):
            return line[:300]
    return (lines[-1] if lines else type(error).__name__)[:300]


def search_params(cfg: SearchConfig) -> dict[str, str]:
    """The parent run's params: what was searched and how, short enough to read in the
    UI's columns (the whole config is the parent's `config.yaml` artifact)."""
    params = {}
    for name in NAMES:
        r = getattr(cfg.space, name)
        params[f"space.{name}"] = (f"fixed {fmt(r.value)}" if r.fixed else
                                   f"{'log-uniform' if r.log else 'uniform'} "
                                   f"[{fmt(r.low)}, {fmt(r.high)}]")
    s, sch = cfg.search, cfg.scheduler
    params["search.sampler"] = (f"{s.sampler} (seed {s.seed}"
                                + (f", {s.n_startup_trials} random first"
                                   if s.sampler in ("tpe", "gp") else "") + ")")
    params["search.trials"] = f"{s.num_samples}, {s.max_concurrent} at a time"
    params["search.metric"] = f"{s.metric} ({s.mode})"
    params["scheduler"] = (f"asha (grace {sch.grace_period}, reduction {sch.reduction_factor:g}"
                           + (f", {sch.brackets} brackets" if sch.brackets > 1 else "") + ")"
                           if sch.name == "asha" else sch.name)
    params.update({"model.name": cfg.model.name, "data.dataset": cfg.data.dataset,
                   "optimizer.name": cfg.optimizer.name, "train.epochs": str(cfg.train.epochs),
                   "train.batch_size": str(cfg.train.batch_size)})
    if cfg.resources.distributed:
        params["resources.workers_per_trial"] = (
            f"{cfg.resources.workers_per_trial}"
            + (", Adam state sharded (ZeRO-1)" if cfg.optimizer.shard_state else ""))
    return params


def outcome(metrics: dict[str, Any], epochs: int, error: bool) -> str:
    """How a trial ended, from its last result (`error`: it raised)."""
    if error or metrics.get("error"):
        return "failed"
    if metrics.get("diverged"):
        return "diverged"
    return "completed" if metrics.get("epoch", 0) >= epochs else "pruned"


def transient(error: Exception) -> bool:
    """Whether a failed MLflow write may succeed later: the server or network was down."""
    if isinstance(error, OSError):  # requests' connection errors are OSErrors
        return True
    status = getattr(error, "get_http_status_code", None)
    return status is not None and status() >= 500


@dataclass(frozen=True)
class RunUpdate:
    """Metrics of one epoch and/or tags for one trial's run, queued for MLflow. Consecutive
    updates go out as one `log_batch` per run; an epoch logged before is skipped."""

    trial_id: str
    step: int | None = None  # the epoch the metrics are of
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    timestamp_ms: int = 0


Job = Callable[[], None] | RunUpdate


class Tracker:
    """The MLflow side of one search: a parent run and a child run per trial.

    Every write is queued and delivered in order by one writer thread, so Tune's loop
    (and through it every trial, which waits for the driver after each report) never
    waits for MLflow. The first job opens the search's runs, and imports MLflow: it runs
    while Ray starts. Epoch metrics queued while the writer was busy go out as one
    `log_batch` per run. A write that fails (server down) stays at the head of the queue
    and is retried every RETRY_S seconds; `drain` waits for the queue to empty.
    """

    def __init__(self, tracking_uri: str, experiment: str, search_dir: str, run_name: str,
                 params: dict[str, str], config_yaml: str = "") -> None:
        self.tracking_uri = tracking_uri
        self.client: MlflowClient | None = None  # set by the first job
        self.experiment_id = ""
        self.parent_run_id = ""
        self.children: dict[str, str] = {}  # trial id -> run id
        self.logged_steps: dict[str, set[int]] = {}  # trial id -> epochs already logged
        self._jobs: deque[Job] = deque()
        self._busy = False
        self._cv = threading.Condition()
        self._warned = False
        self._started = threading.Event()
        self.submit(lambda: self._open(experiment, search_dir, run_name, params, config_yaml))
        threading.Thread(target=self._deliver_forever, name="mlflow-writer", daemon=True).start()

    def start(self) -> None:
        """Begin writing. Until then the writer only imports MLflow: a search refused
        before it starts (bad input, a trial no node can run) leaves nothing in MLflow."""
        self._started.set()

    @property
    def pending(self) -> int:
        """Writes not yet delivered."""
        with self._cv:
            return len(self._jobs) + self._busy

    def _open(self, experiment: str, search_dir: str, run_name: str,
              params: dict[str, str], config_yaml: str) -> None:
        """Find the search's parent run (a resumed search) with its children, or create it."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        sqlite_schema.prepare(self.tracking_uri)  # a new SQLite store: copied, not migrated
        client = MlflowClient(self.tracking_uri)
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
            if config_yaml:  # the whole config; the params say what was searched and how
                client.log_text(parent.info.run_id, config_yaml, "config.yaml")
        self.client, self.experiment_id = client, experiment_id
        self.parent_run_id = parent.info.run_id
        self._adopt_children()

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

    # ------------------------------------------------------------ the queue

    def submit(self, job: Job) -> None:
        with self._cv:
            self._jobs.append(job)
            self._cv.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued write is delivered, or `timeout_s` has passed."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._jobs and not self._busy, timeout_s)

    def settle(self) -> None:
        """Deliver what is queued now, unless MLflow is down (then the queue waits)."""
        with self._cv:
            self._cv.wait_for(lambda: (not self._jobs and not self._busy) or self._warned)

    def _take(self) -> list[Job]:
        """The next job, or every run update at the head of the queue together."""
        with self._cv:
            self._cv.wait_for(lambda: self._jobs)
            self._busy = True
            if not isinstance(self._jobs[0], RunUpdate):
                return [self._jobs.popleft()]
            group = []
            while self._jobs and isinstance(self._jobs[0], RunUpdate):
                group.append(self._jobs.popleft())
            return group

    def _deliver_forever(self) -> None:
        import mlflow.tracking  # noqa: F401  (about 1 s: paid here, while Ray starts)

        self._started.wait()
        while True:
            group = self._take()
            try:
                self._deliver(group)  # takes delivered jobs off `group` as it goes
                failed = None
            except Exception as e:
                failed = e
            if failed is not None and not transient(failed):
                # It would fail again: drop it rather than block every write behind it.
                log.error("MLflow write dropped: %s: %s", type(failed).__name__,
                          (str(failed).splitlines() or [""])[0])
                group.pop(0)
            elif failed is not None and not self._warned:
                log.warning("MLflow unreachable, %d writes queued: %s",
                            len(group) + len(self._jobs), type(failed).__name__)
            with self._cv:
                self._jobs.extendleft(reversed(group))  # undelivered: first in line
                self._busy = False
                self._warned = failed is not None and transient(failed)
                self._cv.notify_all()
            if self._warned:  # the server is down: try again in a while
                time.sleep(RETRY_S)

    def _deliver(self, group: list[Job]) -> None:
        if not isinstance(group[0], RunUpdate):
            group[0]()
            group.pop()
            return
        from mlflow.entities import Metric, RunTag

        by_trial: dict[str, list[RunUpdate]] = {}
        for update in group:
            by_trial.setdefault(update.trial_id, []).append(update)
        for trial_id, updates in by_trial.items():
            steps = self.logged_steps.setdefault(trial_id, set())
            fresh = [u for u in updates if u.step is not None and u.step not in steps]
            metrics = [Metric(k, v, u.timestamp_ms, u.step)
                       for u in fresh for k, v in u.metrics.items()]
            tags = [RunTag(k, v) for u in updates for k, v in u.tags.items()]
            for i in range(0, max(len(metrics), 1), 1000):  # at most 1000 metrics a batch
                self.client.log_batch(self.children[trial_id], metrics=metrics[i : i + 1000],
                                      tags=tags if i == 0 else [])
            steps.update(u.step for u in fresh)
            for u in updates:
                group.remove(u)

    # ------------------------------------------------------------ trials

    def start_trial(self, trial_id: str, trial_name: str, params: dict[str, float]) -> None:
        retried = False

        def create() -> None:
            nonlocal retried
            if trial_id in self.children:  # resumed
                return
            if retried:  # the server may have made the run before the connection broke
                found = self.client.search_runs(
                    [self.experiment_id], max_results=1,
                    filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' "
                                  f"and tags.trial_id = '{trial_id}'")
                if found:
                    self.children[trial_id] = found[0].info.run_id
                    return
            retried = True
            run = self.client.create_run(
                self.experiment_id, run_name=trial_name,
                tags={PARENT_TAG: self.parent_run_id, "trial_id": trial_id},
            )
            self.children[trial_id] = run.info.run_id

        def log_params() -> None:  # logging the same value again is allowed: retry-safe
            from mlflow.entities import Param

            self.client.log_batch(self.children[trial_id],
                                  # short, so the UI's table cells keep the exponent
                                  params=[Param(k, fmt(v)) for k, v in params.items()])

        self.submit(create)
        self.submit(log_params)

    def log_epoch(self, trial_id: str, metrics: dict[str, Any]) -> None:
        values = {k: float(metrics[k]) for k in METRICS if k in metrics}
        self.submit(RunUpdate(trial_id, int(metrics["epoch"]), values,
                              timestamp_ms=int(time.time() * 1000)))

    def tag_trial(self, trial_id: str, key: str, value: str) -> None:
        self.submit(RunUpdate(trial_id, tags={key: value}))

    def end_trial(self, trial_id: str, how: str, error: str | None = None,
                  epoch: int | None = None) -> None:
        status = "FAILED" if how == "failed" else "FINISHED"
        tags = {"outcome": how, **({"error": error[:5000]} if error else {}),
                **({"pruned_at_epoch": str(epoch)} if how == "pruned" and epoch else {})}
        self.submit(RunUpdate(trial_id, tags=tags))
        self.submit(lambda: self.client.set_terminated(self.children[trial_id], status))

    def keep_only(self, trial_ids: set[str]) -> None:
        """Delete (softly) the runs of trials Ray does not know: trials a killed driver
        started after its last saved experiment state, which `--resume` starts afresh under
        new ids."""

        def delete() -> None:
            for trial_id in [t for t in self.children if t not in trial_ids]:
                self.client.delete_run(self.children.pop(trial_id))
                self.logged_steps.pop(trial_id, None)

        self.submit(delete)

    # ------------------------------------------------------------ the search

    def fail_search(self, failed_trials: int) -> None:
        """End the parent run as FAILED (no trial produced a model), never left RUNNING."""
        self.submit(lambda: self.client.set_tag(self.parent_run_id, "failed_trials",
                                                str(failed_trials)))
        self.submit(lambda: self.client.set_terminated(self.parent_run_id, "FAILED"))

    def rank_trials(self, ranked: list[str], champion: str | None) -> None:
        """Tag each trial's run with its rank (1 = best) and the champion's with `champion`."""
        for rank, trial_id in enumerate(ranked, 1):
            tags = {"rank": str(rank), **({"champion": "true"} if trial_id == champion else {})}
            self.submit(RunUpdate(trial_id, tags=tags))

    def finish(self, best: dict[str, Any], top: list[dict[str, Any]], best_yaml: str,
               status: str = "FINISHED", description: str = "",
               importances: dict[str, dict[str, float]] | None = None,
               plots: str | None = None) -> None:
        """The parent's closing record: best values, best.yaml, the top-k table, a Markdown
        description, parameter importances (metrics) and the plots (a folder of PNGs)."""
        def end() -> None:
            from mlflow.entities import Metric, Param, RunTag

            run_id = self.parent_run_id
            now = int(time.time() * 1000)
            params = [Param(f"best.{k}", fmt(v)) for k, v in best["params"].items()]
            metrics = [Metric(f"best_{best['metric']}", float(best["value"]), now, 0)]
            metrics += [Metric(f"importance.{evaluator}.{name}", float(value), now, 0)
                        for evaluator, values in (importances or {}).items()
                        for name, value in values.items()]
            tags = [RunTag("best_trial_id", best["trial_id"]),
                    RunTag("failed_trials", str(best["failed_trials"]))]
            if description:
                tags.append(RunTag(NOTE_TAG, description))
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
            self.client.log_text(run_id, best_yaml, "best.yaml")
            # Plain JSON, every value with its full precision (MLflow's log_table goes
            # through pandas, which writes 2.23e-10 as 2e-10).
            self.client.log_dict(run_id, {"columns": list(top[0]) if top else [],
                                          "data": [list(row.values()) for row in top]},
                                 "top_trials.json")
            if plots:
                self.client.log_artifacts(run_id, plots, "plots")
            self.client.set_terminated(run_id, status)

        self.submit(end)


_open_trackers: dict[str, Tracker] = {}  # search dir -> its Tracker, one per process


class TrackingCallback(tune.Callback):
    """Routes Tune's trial events to a Tracker.

    Holds only plain values until `setup`, because Tune pickles its callbacks with the
    experiment and unpickles them on `Tuner.restore`; `setup` then finds the parent run
    and the children the interrupted driver had logged.
    """

    def __init__(self, tracking_uri: str, experiment: str, search_dir: str, run_name: str,
                 params: dict[str, str], epochs: int, config_yaml: str = "",
                 workers: int = 1) -> None:
        self.tracking_uri = tracking_uri
        self.workers = workers  # processes per trial: a param of every trial's run
        self.config_yaml = config_yaml
        self.experiment = experiment
        self.search_dir = search_dir
        self.run_name = run_name
        self.params = params
        self.epochs = epochs
        self.tracker: Tracker | None = None
        self.reconciled = False  # MLflow's runs checked against Ray's trials

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles its callbacks into the search's storage (tuner.pkl, a shared folder or
        # an object store on a cluster): no credentials there. A resumed driver opens the
        # Tracker itself, with the URI the user gives again (`open` finds it by search_dir).
        return {**self.__dict__, "tracking_uri": redact(self.tracking_uri), "tracker": None,
                "reconciled": False}

    def setup(self, **info) -> None:
        self.open().start()

    def open(self) -> Tracker:
        """The search's Tracker, made on first use: the driver makes it before Ray starts
        (so MLflow is imported meanwhile), Tune's `setup` starts it, and a callback restored
        from Ray's experiment state (`--resume`) finds the same one."""
        if self.tracker is None:
            if self.search_dir not in _open_trackers:
                _open_trackers[self.search_dir] = Tracker(
                    self.tracking_uri, self.experiment, self.search_dir, self.run_name,
                    self.params, getattr(self, "config_yaml", ""))
            self.tracker = _open_trackers[self.search_dir]
        return self.tracker

    def on_step_begin(self, iteration, trials, **info) -> None:
        if not self.reconciled:  # first step: a resumed search's trials are all here now
            self.reconciled = True
            self.tracker.keep_only({t.trial_id for t in trials})

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        params = optimizer_params(trial.config)
        # The run's name says what it tried: `c57f6e80 lr=0.001 beta1=0.9 ...`
        self.tracker.start_trial(trial.trial_id, f"{trial.trial_id} {sample_line(params)}",
                                 {**params, "workers": getattr(self, "workers", 1)})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "epoch" not in result or result.get("error"):
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
        self.tracker.end_trial(trial.trial_id, outcome(last, self.epochs, error=False),
                               last.get("error"), last.get("epoch"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.tracker.end_trial(trial.trial_id, "failed", error_line(trial.get_error()))

    def get_state(self) -> None:
        """Called as Ray snapshots the experiment: MLflow is brought up to date first, so
        that a driver killed after the snapshot has left in MLflow every epoch and every
        ended trial the snapshot knows of (`--resume` replays only what came after)."""
        self.tracker.settle()
        return None

    def on_experiment_end(self, trials, **info) -> None:
        if not self.tracker.drain(timeout_s=DRAIN_S):
            log.warning("%d MLflow writes could not be delivered", self.tracker.pending)
