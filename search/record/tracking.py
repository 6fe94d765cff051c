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
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ray import tune

from search.config import ConfigError, SearchConfig
from search.record import reconcile, sqlite_schema
from search.record.reconcile import Restored

# Re-exported: the names of the MLflow store as every command uses them.
from search.record.store import (  # noqa: F401
    REDACTED,
    REGISTRY_SCHEMES,
    TRACKING_SCHEMES,
    check_tracking_uri,
    mlflow_settings,
    redact,
)
from search.space import describe, fmt, sample_line, trial_params

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# What of a trial's result goes to its MLflow run each epoch: the trainer's own numbers and
# every validation metric its task reports (search/trial/trainer.py; not imported here: it
# would pull torch into the driver's start).
OWN_METRICS = ("train_loss", "lr", "epoch_s")


def is_tracked(key: str) -> bool:
    """Whether a result key is a metric logged per epoch: train_loss, lr, epoch_s, the
    throughput (images_per_s, samples_per_s) and every val_* metric."""
    return key in OWN_METRICS or key.startswith("val_") or key.endswith("_per_s")


# Adam's values per epoch (besides lr), tracked where they change along the way (PBT).
ADAM_VALUES = ("beta1", "beta2", "eps", "weight_decay")


def tracked(result: dict[str, Any], also: tuple[str, ...] = ()) -> dict[str, float]:
    """The tracked metrics of a result, and the keys `also` names, as floats (numbers
    only)."""
    return {k: float(v) for k, v in result.items()
            if (is_tracked(k) or k in also) and isinstance(v, (int, float))
            and not isinstance(v, bool)}

PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
NOTE_TAG = "mlflow.note.content"  # a run's Markdown description in the MLflow UI
SEARCH_TAG = "search.dir"  # identifies a search's parent run across restarts
DRAIN_S = 300.0  # at the end, how long to wait for a tracking server to come back
RETRY_S = 3.0  # pause between delivery attempts while the tracking server is down
ATTEMPTS = 100  # tries of one write (RETRY_S apart: 5 minutes) before it is dropped
OPEN_S = 60.0  # how long a search waits for its parent run before it gives up
# OSErrors that no retry changes: a local file or folder missing, or not ours to read.
PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError,
                       NotADirectoryError, PermissionError)


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
    for name, r in cfg.space.keys().items():
        params[f"space.{name}"] = describe(r)
    s, sch = cfg.search, cfg.scheduler
    params["search.sampler"] = (f"{s.sampler} (seed {s.seed}"
                                + (f", {s.n_startup_trials} random first"
                                   if s.sampler in ("tpe", "gp") else "") + ")")
    params["search.trials"] = f"{s.num_samples}, {s.max_concurrent} at a time"
    params["search.metric"] = f"{s.metric} ({s.mode})"
    params["scheduler"] = (
        f"asha (grace {sch.grace_period}, reduction {sch.reduction_factor:g}"
        + (f", {sch.brackets} brackets" if sch.brackets > 1 else "") + ")"
        if sch.name == "asha" else
        f"pbt (every {sch.perturbation_interval} epochs, quantile {sch.quantile_fraction:g}, "
        f"resample {sch.resample_probability:g}, factors "
        f"{'/'.join(f'{f:g}' for f in sch.perturbation_factors)}"
        f"{', synch' if sch.synch else ''})"
        if sch.name == "pbt" else
        f"pb2 (every {sch.perturbation_interval} epochs, quantile {sch.quantile_fraction:g}"
        f"{', synch' if sch.synch else ''})"
        if sch.name == "pb2" else sch.name)
    params.update({"model.name": cfg.model.name,
                   **({"data.dataset": cfg.data.dataset} if cfg.train.task is None else
                      {"train.task": cfg.train.task}),
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
    """Whether a failed MLflow write may succeed later: the server or the network was down
    (a refused or broken connection, a timeout, a 5xx) or asked us to slow down (429). A
    4xx, a local file that is missing, or any other error would fail the same way again.
    MLflow's REST client reports a connection failure, and a 5xx it gave up retrying, as
    an MlflowException with its default code INTERNAL_ERROR (500): counted as transient,
    and bounded by ATTEMPTS like every retry."""
    if isinstance(error, PERMANENT_OS_ERRORS):
        return False
    if isinstance(error, OSError):  # requests' connection errors and timeouts are OSErrors
        return True
    code = getattr(error, "error_code", None)
    if not isinstance(code, str):
        return False
    from mlflow.exceptions import ERROR_CODE_TO_HTTP_STATUS

    status = ERROR_CODE_TO_HTTP_STATUS.get(code)  # a code it does not map (INVALID_STATE): 4xx
    return status is not None and (status >= 500 or status == 429)


def end_tags(how: str, error: str | None = None, epoch: int | None = None) -> dict[str, str]:
    """The tags a trial's run ends with: its outcome, the error's line, the pruned epoch."""
    return {"outcome": how, **({"error": error[:5000]} if error else {}),
            **({"pruned_at_epoch": str(epoch)} if how == "pruned" and epoch else {})}


@dataclass(frozen=True)
class RunUpdate:
    """Metrics of one epoch and/or tags for one trial's run, queued for MLflow. Consecutive
    updates go out as one `log_batch` per run; an epoch logged before is skipped."""

    trial_id: str
    step: int | None = None  # the epoch the metrics are of
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    timestamp_ms: int = 0


@dataclass
class Artifact:
    """A write to a run's artifacts, named for the log. MLflow's artifact store can fail
    while its tracking server answers (a full disk under `--artifacts-destination`): such a
    write is then dropped at once, with a line, rather than retried for minutes with every
    metric queued behind it."""

    what: str
    write: Callable[[], None]

    def __call__(self) -> None:
        self.write()


Job = Callable[[], None] | RunUpdate
BATCH_METRICS = 1000  # MLflow's limit of metrics in one log_batch


def whole_epochs(updates: list[RunUpdate]) -> list[list[RunUpdate]]:
    """Updates in chunks of at most BATCH_METRICS metrics, an epoch never split: a chunk
    delivered is a set of epochs logged whole. Always one chunk (for the tags), maybe empty."""
    chunks: list[list[RunUpdate]] = [[]]
    size = 0
    for u in updates:
        if chunks[-1] and size + len(u.metrics) > BATCH_METRICS:
            chunks.append([])
            size = 0
        chunks[-1].append(u)
        size += len(u.metrics)
    return chunks


class Tracker:
    """The MLflow side of one search: a parent run and a child run per trial.

    Every write is queued and delivered in order by one writer thread, so Tune's loop
    (and through it every trial, which waits for the driver after each report) never
    waits for MLflow. The first job opens the search's runs, and imports MLflow: it runs
    while Ray starts. Epoch metrics queued while the writer was busy go out as one
    `log_batch` per run, each epoch once. A write that fails transiently (server down)
    stays at the head of the queue and is tried again every RETRY_S seconds, ATTEMPTS
    times at most; one that would fail again is dropped at once, with one line.
    """

    def __init__(self, tracking_uri: str, experiment: str, search_dir: str, run_name: str,
                 params: dict[str, str], config_yaml: str = "") -> None:
        self.tracking_uri = tracking_uri
        self.search_dir = search_dir
        self.client: MlflowClient | None = None  # set by the first job
        self.experiment_id = ""
        self.parent_run_id = ""
        self.resumed = False  # the parent run was there: a resumed search
        self.children: dict[str, str] = {}  # trial id -> run id
        self.logged_steps: dict[str, set[int]] = {}  # trial id -> epochs already logged
        self._jobs: deque[Job] = deque()
        self._busy = False
        self._stop = False
        self._cv = threading.Condition()
        self._warned = False
        self._started = threading.Event()
        self._opened = threading.Event()
        self._open_error: Exception | None = None
        self._failing: list[Job] = []  # the jobs being delivered: dropped if they fail
        self._open_job = lambda: self._open(experiment, run_name, params, config_yaml)
        self.submit(self._open_job)
        self._thread = threading.Thread(target=self._deliver_forever, name="mlflow-writer",
                                        daemon=True)
        self._thread.start()

    def start(self) -> None:
        """Begin writing. Until then the writer only imports MLflow: a search refused
        before it starts (bad input, a trial no node can run) leaves nothing in MLflow."""
        self._started.set()

    def wait_open(self, timeout_s: float = OPEN_S) -> None:
        """Return once the search's parent run is open; raise ConfigError, with the reason
        in one line, if it cannot be: a search is not run untracked."""
        if not self._opened.wait(timeout_s):
            raise ConfigError(f"mlflow.tracking_uri {redact(self.tracking_uri)}: the "
                              f"search's run could not be opened in {timeout_s:.0f} s")
        if self._open_error is not None:
            e = self._open_error
            raise ConfigError(str(e) if isinstance(e, ConfigError) else
                              f"mlflow.tracking_uri {redact(self.tracking_uri)}: the "
                              f"search's run could not be opened: {type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:300]}")

    @property
    def pending(self) -> int:
        """Writes not yet delivered."""
        with self._cv:
            return len(self._jobs) + self._busy

    def _open(self, experiment: str, run_name: str, params: dict[str, str],
              config_yaml: str) -> None:
        """Find the search's parent run (a resumed search) with its children, or create it."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        sqlite_schema.prepare(self.tracking_uri)  # a new SQLite store: copied, not migrated
        client = MlflowClient(self.tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise ConfigError(f"mlflow.experiment {experiment}: deleted (in MLflow's trash); "
                              "restore it in the MLflow UI, or pick another name with "
                              "--set mlflow.experiment=NAME")
        experiment_id = exp.experiment_id if exp else client.create_experiment(experiment)
        found = client.search_runs([experiment_id], max_results=1,
                                   filter_string=f"tags.`{SEARCH_TAG}` = '{self.search_dir}'")
        parent = found[0] if found else None
        if parent is None:
            parent = client.create_run(experiment_id, run_name=run_name,
                                       tags={SEARCH_TAG: self.search_dir, "role": "search"})
            items = [Param(k, v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
                client.log_batch(parent.info.run_id, params=items[i : i + 100])
            if config_yaml:  # the whole config; the params say what was searched and how
                self.submit(Artifact("config.yaml", lambda: client.log_text(
                    parent.info.run_id, config_yaml, "config.yaml")))
        elif parent.info.status != "RUNNING":  # a resumed search runs again (extended)
            client.update_run(parent.info.run_id, status="RUNNING")
        self.client, self.experiment_id = client, experiment_id
        self.parent_run_id = parent.info.run_id
        self.resumed = bool(found)
        self._adopt_children()
        self._opened.set()

    def _adopt_children(self) -> None:
        for run in self._child_runs():
            trial_id = run.data.tags.get("trial_id")
            if trial_id:
                self.children[trial_id] = run.info.run_id
                self.logged_steps[trial_id] = self._steps(run)

    def _child_runs(self) -> list:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
            max_results=10000)

    def _steps(self, run) -> set[int]:
        """The epochs a run holds (metrics of an epoch are logged together)."""
        key = next((k for k in run.data.metrics if is_tracked(k)), None)
        if key is None:
            return set()
        return {m.step for m in self.client.get_metric_history(run.info.run_id, key)}

    # ------------------------------------------------------------ the queue

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stop:  # closed: nothing is written any more
                log.debug("MLflow write after the tracker closed: not queued")
                return
            self._jobs.append(job)
            self._cv.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued write is delivered, or `timeout_s` has passed."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._jobs and not self._busy, timeout_s)

    def close(self, timeout_s: float) -> bool:
        """Deliver what is queued, for `timeout_s` at most, then stop the writer thread and
        leave the registry of open trackers. Whether everything was delivered."""
        if self._stop:  # closed already
            return True
        # Never started (the search was refused before it ran): nothing is to be written.
        drained = self.drain(timeout_s) if self._started.is_set() else True
        if not drained:
            log.warning("%d MLflow writes could not be delivered", self.pending)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._started.set()  # a tracker closed before it started: its thread ends too
        self._thread.join(timeout=RETRY_S + 15)  # a write in flight times out in 10 s
        if _open_trackers.get(self.search_dir) is self:
            del _open_trackers[self.search_dir]
        return drained

    def _take(self) -> list[Job]:
        """The next job, or every run update at the head of the queue together; none once
        the tracker is closed."""
        with self._cv:
            self._cv.wait_for(lambda: self._jobs or self._stop)
            if self._stop:
                return []
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
        attempts = 0
        while group := self._take():
            size = len(group)
            try:
                self._deliver(group)  # takes delivered jobs off `group` as it goes
                failed = None
            except Exception as e:
                failed = e
            if failed is None or len(group) < size:  # progress: a fresh budget
                attempts = 0
            attempts += failed is not None
            retry = failed is not None and transient(failed) and attempts < ATTEMPTS
            refused = (retry and isinstance(group[0], Artifact) and self._answers())
            if refused:  # the server is up: its artifact store failed (full?), not the network
                retry = False
            if failed is not None and not retry:
                # It would fail again, or has failed ATTEMPTS times: drop it rather than
                # block every write behind it.
                dropped = self._failing or group[:1]
                if self._open_job in dropped:  # fatal: `wait_open` says why, in one line
                    self._open_error = failed
                    self._opened.set()
                else:
                    log.error("MLflow write dropped%s: %s: %s",
                              f" ({group[0].what}: the artifact store refused it while the "
                              "tracking server answers; is its disk full?)" if refused else
                              f" after {attempts} tries" if transient(failed) else "",
                              type(failed).__name__,
                              (str(failed).splitlines() or [""])[0][:300])
                group = [job for job in group if job not in dropped]
                attempts = 0
            elif failed is not None and not self._warned:
                log.warning("MLflow unreachable, %d writes queued: %s",
                            len(group) + len(self._jobs), type(failed).__name__)
            with self._cv:
                self._jobs.extendleft(reversed(group))  # undelivered: first in line
                self._busy = False
                self._warned = retry
                self._cv.notify_all()
                if retry:  # the server is down: try again in a while
                    self._cv.wait_for(lambda: self._stop, RETRY_S)

    def _answers(self) -> bool:
        """Whether the tracking server answers a read now."""
        try:
            self.client.get_experiment(self.experiment_id)
            return True
        except Exception:  # noqa: BLE001  (down, or failing: either way not answering)
            return False

    def _deliver(self, group: list[Job]) -> None:
        self._failing = []
        if not isinstance(group[0], RunUpdate):
            self._failing = group[:1]
            group[0]()
            group.pop()
            return
        from mlflow.entities import Metric, RunTag

        by_trial: dict[str, list[RunUpdate]] = {}
        for update in group:
            by_trial.setdefault(update.trial_id, []).append(update)
        for trial_id, updates in by_trial.items():
            self._failing = updates
            steps = self.logged_steps.setdefault(trial_id, set())
            fresh: dict[int, RunUpdate] = {}  # the first report of each epoch not yet logged
            for u in updates:
                if u.step is not None and u.step not in steps:
                    fresh.setdefault(u.step, u)
            tags = [RunTag(k, v) for u in updates for k, v in u.tags.items()]
            for chunk in whole_epochs(list(fresh.values())):
                metrics = [Metric(k, v, u.timestamp_ms, u.step)
                           for u in chunk for k, v in u.metrics.items()]
                self.client.log_batch(self.children[trial_id], metrics=metrics, tags=tags)
                steps.update(u.step for u in chunk)  # delivered: never sent again
                tags = []  # delivered with the first chunk
            for u in updates:
                group.remove(u)
        self._failing = []

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

    def log_epoch(self, trial_id: str, metrics: dict[str, Any],
                  also: tuple[str, ...] = ()) -> None:
        values = tracked(metrics, also)
        self.submit(RunUpdate(trial_id, int(metrics["epoch"]), values,
                              timestamp_ms=int(time.time() * 1000)))

    def tag_trial(self, trial_id: str, key: str, value: str) -> None:
        self.submit(RunUpdate(trial_id, tags={key: value}))

    def end_trial(self, trial_id: str, how: str, error: str | None = None,
                  epoch: int | None = None) -> None:
        status = "FAILED" if how == "failed" else "FINISHED"
        self.submit(RunUpdate(trial_id, tags=end_tags(how, error, epoch)))
        self.submit(lambda: self.client.set_terminated(self.children[trial_id], status))

    def reconcile(self, trials: list[tuple[Restored, Callable[[], str]]]) -> None:
        """On resume, make MLflow's child runs equal Ray's restored trials (search/record/
        reconcile.py): each trial's restored record, with the text of its result.json
        read by the callable (in this thread, not Tune's loop). Queued before the resumed
        trials log anything; retried as a whole, since it plans from MLflow's state."""
        self.submit(lambda: self._reconcile(trials))

    def _reconcile(self, trials: list[tuple[Restored, Callable[[], str]]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        if not self.resumed:
            return
        restored = {}
        for trial, load in trials:
            epochs, times, node = reconcile.read_record(load(), tracked)
            restored[trial.trial_id] = replace(trial, epochs=epochs, timestamps_ms=times,
                                               node_id=node)
        logged = [reconcile.Logged(r.info.run_id, r.data.tags.get("trial_id", ""),
                                   frozenset(self._steps(r)), r.data.tags, r.info.status,
                                   r.info.start_time or 0) for r in self._child_runs()]
        todo = reconcile.plan(restored, logged)
        children = dict(todo.keep)
        for trial_id in todo.rebuild:  # a new run, from Ray's record alone
            trial = restored[trial_id]
            children[trial_id] = self.client.create_run(
                self.experiment_id, run_name=trial.run_name,
                tags={PARENT_TAG: self.parent_run_id, "trial_id": trial_id,
                      **({"node_id": trial.node_id} if trial.node_id else {})}).info.run_id
        for trial_id, run_id in children.items():
            trial = restored[trial_id]
            epochs = trial.epochs if trial_id in todo.rebuild else {
                e: trial.epochs[e] for e in todo.fill.get(trial_id, ())}
            params = [Param(k, fmt(v)) for k, v in trial.params.items()]
            record = [RunUpdate(trial_id, e, values, timestamp_ms=trial.timestamps_ms.get(e, 0))
                      for e, values in sorted(epochs.items())]
            for chunk in whole_epochs(record):  # a retry finds each epoch whole or absent
                self.client.log_batch(run_id, params=params, metrics=[
                    Metric(k, v, u.timestamp_ms, u.step) for u in chunk
                    for k, v in u.metrics.items()])
                params = []
            if trial.end is not None and (trial_id in todo.rebuild or trial_id in todo.end):
                self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in trial.end.items()])
                self.client.set_terminated(run_id, trial.status)
        for run_id in todo.delete:  # last: a retry after a failure here finds the new runs
            self.client.delete_run(run_id)
        self.children = children
        self.logged_steps = {t: set(restored[t].epochs) for t in children}
        if todo.delete or todo.rebuild or todo.fill or todo.end:
            log.info("MLflow brought back to the resumed search's record: %d runs made "
                     "anew, %d deleted, %d completed", len(todo.rebuild), len(todo.delete),
                     len(todo.fill) + len(todo.end))

    # ------------------------------------------------------------ the search

    def fail_search(self, failed_trials: int | None = None, reason: str | None = None) -> None:
        """End the parent run as FAILED (no trial produced a model, or the driver failed:
        `reason`), never left RUNNING."""
        self.tag_search({**({"failed_trials": str(failed_trials)}
                            if failed_trials is not None else {}),
                         **({"error": reason[:5000]} if reason else {})})
        self.submit(lambda: self.client.set_terminated(self.parent_run_id, "FAILED"))

    def tag_search(self, tags: dict[str, str]) -> None:
        """Tags on the parent run."""
        def tag() -> None:
            from mlflow.entities import RunTag

            self.client.log_batch(self.parent_run_id,
                                  tags=[RunTag(k, v) for k, v in tags.items()])

        self.submit(tag)

    def rank_trials(self, ranked: list[str], champion: str | None) -> None:
        """Tag each trial's run with its rank (1 = best) and the champion's with `champion`."""
        for rank, trial_id in enumerate(ranked, 1):
            tags = {"rank": str(rank), **({"champion": "true"} if trial_id == champion else {})}
            self.submit(RunUpdate(trial_id, tags=tags))

    def finish(self, best: dict[str, Any], top: list[dict[str, Any]], best_yaml: str,
               status: str = "FINISHED", description: str = "",
               importances: dict[str, dict[str, float]] | None = None,
               plots: str | None = None) -> None:
        """The parent's closing record: best values (`best.*` params; tags where a resumed
        search's best changed), best.yaml, the top-k table, a Markdown description,
        parameter importances (metrics) and the plots (a folder of PNGs)."""
        def end() -> None:
            from mlflow.entities import Metric, Param, RunTag

            run_id = self.parent_run_id
            now = int(time.time() * 1000)
            values = {f"best.{k}": fmt(v) for k, v in best["params"].items()}
            # MLflow refuses to change a param (and drops the whole batch): a resumed search
            # whose best changed (an extended one) gives the new values as tags.
            logged = self.client.get_run(run_id).data.params if self.resumed else {}
            params = [Param(k, v) for k, v in values.items() if logged.get(k) in (None, v)]
            moved = [RunTag(k, v) for k, v in values.items() if logged.get(k) not in (None, v)]
            metrics = [Metric(f"best_{best['metric']}", float(best["value"]), now, 0)]
            metrics += [Metric(f"importance.{evaluator}.{name}", float(value), now, 0)
                        for evaluator, values in (importances or {}).items()
                        for name, value in values.items()]
            tags = [RunTag("best_trial_id", best["trial_id"]),
                    RunTag("failed_trials", str(best["failed_trials"])), *moved]
            if description:
                tags.append(RunTag(NOTE_TAG, description))
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)

        run_id, client = self.parent_run_id, self.client
        self.submit(end)
        self.submit(Artifact("best.yaml", lambda: client.log_text(run_id, best_yaml,
                                                                  "best.yaml")))
        # Plain JSON, every value with its full precision (MLflow's log_table goes through
        # pandas, which writes 2.23e-10 as 2e-10).
        table = {"columns": list(top[0]) if top else [],
                 "data": [list(row.values()) for row in top]}
        self.submit(Artifact("top_trials.json",
                             lambda: client.log_dict(run_id, table, "top_trials.json")))
        if plots:
            self.submit(Artifact("plots", lambda: client.log_artifacts(run_id, plots, "plots")))
        self.submit(lambda: client.set_terminated(run_id, status))


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
        # Under PBT, the scheduler's list of exploits (search/pbt_scheduler.py), each
        # tagged on its receiving run; how many of each trial's are tagged.
        self.exploits: list = []
        self.pbt = False  # Adam's values logged every epoch
        self.tagged: dict[str, int] = {}
        self.started: set[str] = set()  # trials started by this driver

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

    def close(self, timeout_s: float) -> bool:
        """Deliver what is queued (for `timeout_s` at most) and end the Tracker's thread."""
        return self.tracker.close(timeout_s) if self.tracker is not None else True

    def on_step_begin(self, iteration, trials, **info) -> None:
        if not self.reconciled:  # first step: a resumed search's trials are all here now
            self.reconciled = True
            self.tracker.reconcile([self.restored(t) for t in trials])

    def restored(self, trial) -> tuple[Restored, Callable[[], str]]:
        """A trial as Ray restored it, and a reader of its result.json in storage (what
        Ray's JsonLoggerCallback restores and appends to)."""
        params = {**self.first_params(trial), "workers": getattr(self, "workers", 1)}
        last, end, status = trial.last_result or {}, None, "RUNNING"
        if trial.status == "TERMINATED":
            how = outcome(last, self.epochs, error=False)
            end = end_tags(how, last.get("error"), last.get("epoch"))
            status = "FAILED" if how == "failed" else "FINISHED"
        elif trial.status == "ERROR":
            end, status = end_tags("failed", error_line(trial.get_error())), "FAILED"
        fs, path = trial.storage.storage_filesystem, f"{trial.path}/result.json"

        def load() -> str:
            try:
                with fs.open_input_stream(path) as f:
                    return f.read().decode("utf-8", "replace")
            except FileNotFoundError:  # never synced: Ray's record has no epoch of it
                return ""

        return Restored(trial.trial_id, f"{trial.trial_id} {sample_line(params)}", params,
                        end=end, status=status), load

    def first_params(self, trial) -> dict[str, Any]:
        """`trial`'s params as first sampled: a PBT member exploited before a resume has
        the explored config now, and MLflow keeps a param's first value (its first exploit
        says what it had)."""
        mine = [e for e in getattr(self, "exploits", []) if e.trial == trial.trial_id]
        return trial_params(mine[0].old if mine else trial.config)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        mine = [e for e in getattr(self, "exploits", []) if e.trial == trial.trial_id]
        done = self.tagged.get(trial.trial_id, 0)
        for n, exploit in enumerate(mine[done:], start=done + 1):
            # What a member continued from: MLflow keeps its first params (they cannot
            # change); its values per epoch are metrics.
            self.tracker.tag_trial(trial.trial_id, f"pbt.exploit.{n}", exploit.line())
        self.tagged[trial.trial_id] = len(mine)
        if trial.trial_id in self.started:  # a PBT member's next turn, or a retry
            return
        self.started.add(trial.trial_id)
        params = self.first_params(trial)
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
        # Under PBT Adam's values change along the way: the charts show each schedule.
        self.tracker.log_epoch(trial.trial_id, result,
                               ADAM_VALUES if getattr(self, "pbt", False) else ())

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.tracker.tag_trial(trial.trial_id, "retries", str(trial.num_failures))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        self.tracker.end_trial(trial.trial_id, outcome(last, self.epochs, error=False),
                               last.get("error"), last.get("epoch"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.tracker.end_trial(trial.trial_id, "failed", error_line(trial.get_error()))

    def on_experiment_end(self, trials, **info) -> None:
        if not self.reconciled:  # a resumed search whose trials had all ended: no step ran
            self.reconciled = True
            self.tracker.reconcile([self.restored(t) for t in trials])

    # No `get_state`: Ray snapshots the experiment without waiting for MLflow. A resumed
    # search reconciles MLflow with what the snapshot stored (`reconcile`), and the
    # driver drains the queue at the end (search/run.py).
