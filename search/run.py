"""`python -m search.run CONFIG`: a hyperparameter search with Ray Tune, Optuna, ASHA and MLflow.

    config in -> Ray (here, or a cluster) -> Tuner(OptunaSearch, ASHA, our trainable)
              -> MLflow parent/child runs (driver-side) -> best.yaml, champion model, summary
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune

from search import (
    cluster,
    full_disk,
    lifecycle,
    optuna_search,
    preflight,
    strategy,
    user_code,
    warm_start,
)
from search import config as config_
from search.asha import RungState, rung_epochs
from search.cli import run_main
from search.config import ConfigError, SchedulerConfig, SearchConfig, TrialConfig
from search.optuna_search import OptunaSearch
from search.record import promotion, results
from search.record.checkpoint_janitor import CheckpointJanitor
from search.record.progress import Progress, setup_logging
from search.record.result_log import ResultLog
from search.record.store import local_tracking_uri
from search.record.tracking import (
    DRAIN_S,
    REDACTED,
    TrackingCallback,
    check_tracking_uri,
    error_line,
    mlflow_settings,
    redact,
    search_params,
)
from search.space import DefineByRun, searched, trial_config
from search.trial.distributed import placement
from search.trial.trainable import result_checkpoint, run_trial

log = logging.getLogger("search")
SAVED_CONFIG = "search.yaml"  # the resolved config, next to Ray's experiment state
BEST_CONFIG = "best.yaml"
FAIL_DRAIN_S = 30.0  # a failed driver's wait for MLflow before it exits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="search config (YAML), e.g. conf/digits.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set search.num_samples=16")
    p.add_argument("--num-samples", type=int, help="trials in total (search.num_samples)")
    p.add_argument("--name", help="search name: runs/NAME (default: CONFIG stem + time)")
    p.add_argument("--address", help="join a Ray cluster: auto, HOST:PORT or ray://HOST:10001")
    p.add_argument("--storage-path", help="where Ray keeps the search (default: ./runs); "
                   "shared path or object-store URI on a cluster")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search (the latest one of CONFIG without --name)")
    p.add_argument("--verbose", action="store_true",
                   help="Ray Tune's own trial tables and the libraries' log lines too")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[SearchConfig, str, str]:
    """The validated config, the search's storage path and its name. Writes nothing."""
    # Where the search runs (cluster, tracking server) may change on --resume; what it
    # searches may not.
    where = [f"ray.address={args.address}"] if args.address else []
    if args.tracking_uri:
        where.append(f"mlflow.tracking_uri={args.tracking_uri}")
    what = list(args.set)
    if args.num_samples is not None:
        what.append(f"search.num_samples={args.num_samples}")
    if isinstance(args.config, SearchConfig):  # from Python: overrides as --set does
        raw = args.config.model_dump(mode="json", exclude_none=True)
        cfg = config_.validate(SearchConfig, config_.apply_overrides(raw, what + where),
                               "config")
    else:
        cfg = config_.load(args.config, what + where)
    storage = storage_path(args.storage_path)
    local = "://" not in storage
    if local and Path(storage).exists() and not Path(storage).is_dir():
        raise ConfigError(f"--storage-path {args.storage_path}: exists and is not a folder")
    stem = cfg.name or (Path(args.config).stem if not isinstance(args.config, SearchConfig)
                        else "search")
    name = config_.check_name(args.name, "--name") if args.name is not None else None
    if args.resume:
        if name is None and local:  # the latest search of this config
            found = sorted(Path(storage).glob(f"{stem}-*/{SAVED_CONFIG}"),
                           key=lambda p: p.stat().st_mtime)
            name = found[-1].parent.name if found else stem
        path = f"{storage}/{name}"
        if not (tune.Tuner.can_restore(path) or (local and Path(path, SAVED_CONFIG).exists())):
            raise ConfigError(f"--resume: no search to resume at {path}")
        if local:  # the interrupted search's own config, so trials stay comparable
            saved = Path(path, SAVED_CONFIG)
            # Where the study lives may be given again too: its password is not stored. And
            # this run's rules: more trials, a new budget, goal or patience.
            again = [o for o in what if o.startswith("search.optuna_storage=")
                     or o.partition("=")[0] in lifecycle.RULES]
            cfg = config_.validate(SearchConfig, config_.apply_overrides(
                config_.read_yaml(saved), where + again), path)
            if REDACTED in (cfg.mlflow.tracking_uri or ""):
                raise ConfigError("--resume: the tracking URI's credentials are not stored; "
                                  "pass --tracking-uri again")
            if REDACTED in (cfg.search.optuna_storage or ""):
                raise ConfigError("--resume: search.optuna_storage's credentials are not "
                                  "stored; pass --set search.optuna_storage=URL again")
    else:
        name = name or config_.check_name(f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}",
                                          "the config file's name (pick one with --name)")
        if local and Path(storage, name).exists():
            raise ConfigError(f"--name {name}: {storage}/{name} exists; "
                              "add --resume to continue it, or pick another name")
    root = Path(cfg.data.root)
    if not root.is_absolute():  # trials run in their own directories
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(
            update={"root": str(root.resolve())})})
    if user_code.plugins(cfg):  # plug-ins beside the config, or in `code`, import as is
        beside = [] if isinstance(args.config, SearchConfig) else [Path(args.config).parent]
        user_code.use_folders([*beside, *cfg.code])
        cfg = cfg.model_copy(update={"code": list(dict.fromkeys(
            [*cfg.code, *user_code.folders(cfg)]))})
    return cfg.model_copy(update={"name": name}), storage, name


def storage_path(given: str | None) -> str:
    """Where Ray keeps searches, spelled one way: a folder as its absolute path (`runs`,
    `./runs/` and `/abs/runs` are one storage, one search, one parent run in MLflow), a URI
    without a trailing slash."""
    if given and "://" in given:
        return given.rstrip("/")
    return str(Path(given or "runs").expanduser().resolve())


def public(cfg: SearchConfig) -> dict:
    """The config as logged and saved: credentials in its URLs removed."""
    raw = cfg.model_dump(mode="json")
    if raw["mlflow"]["tracking_uri"]:
        raw["mlflow"]["tracking_uri"] = redact(raw["mlflow"]["tracking_uri"])
    if raw["search"]["optuna_storage"]:
        raw["search"]["optuna_storage"] = redact(raw["search"]["optuna_storage"])
    for source in raw["search"]["warm_start"]:
        for key in ("optuna_storage", "tracking_uri"):
            if isinstance(source, dict) and source.get(key):
                source[key] = redact(source[key])
    return raw


def snapshot_taken(path: str) -> bool:
    """Whether Ray saved the state of the search at `path` (a local folder, or a URI that
    Ray can restore from): a search killed before that has nothing to restore."""
    if "://" in path:
        return tune.Tuner.can_restore(path)
    return tune.Tuner.can_restore(path) and any(Path(path).glob("experiment_state-*.json"))


def local_folder(storage: str, name: str) -> Path:
    """Where the driver writes its own files of a search (best.yaml, the Optuna journal,
    plots): Ray's experiment folder when storage is local, else runs/NAME here."""
    return Path(storage if "://" not in storage else "runs", name)


def trial_dirname(trial: tune.experiment.Trial) -> str:
    """Short trial folders (Ray's default spells out every hyperparameter)."""
    return f"trial_{trial.trial_id}"


def trainable(cfg: SearchConfig, path: str, trial: Callable[..., None] = run_trial):
    """One trial of this search, with the resources each trial asks for. `trial` is a
    function with `run_trial`'s signature (bench.driver passes one that computes nothing).
    With several workers per trial, the trial drives a Ray Train run kept under `path`
    (the search's folder or URI) whose workers ask for the resources."""
    s, r = cfg.scheduler, cfg.resources
    rungs = (rung_epochs(s.grace_period, s.reduction_factor, cfg.train.epochs)
             if s.name == "asha" else
             # PBT saves and copies members at every interval: a checkpoint must be there.
             tuple(range(s.perturbation_interval, cfg.train.epochs, s.perturbation_interval))
             if s.population_based else ())
    common = dict(base=cfg.trial(), rungs=rungs,
                  checkpoint_period_s=cfg.search.checkpoint_period_s)
    if trial is run_trial:  # the search's metric in every result, whatever the task reports
        common["metric"] = cfg.search.metric
    if r.distributed and trial is run_trial:
        # Imported only here: Ray Train's torch side and ZeRO's torch.distributed imports
        # cost about 0.7 s, before Ray starts, that one-worker searches never use.
        from search.trial.distributed import trial as multiworker

        return tune.with_resources(
            tune.with_parameters(multiworker.run_trial, **common, workers=r.workers_per_trial,
                                 worker=r.worker(), storage=path,
                                 max_failures=cfg.search.max_failures),
            multiworker.DRIVER_RESOURCES)
    return tune.with_resources(tune.with_parameters(trial, **common),
                               {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial})


def tracking_callback(cfg: SearchConfig, storage: str, name: str,
                      tracking_uri: str) -> TrackingCallback:
    """The search's MLflow tracking, as the Tune callback that feeds it."""
    return TrackingCallback(
        tracking_uri, cfg.mlflow.experiment or name, f"{storage}/{name}", name,
        search_params(cfg), cfg.train.epochs,
        config_yaml=yaml.safe_dump(public(cfg), sort_keys=False),
        workers=cfg.resources.workers_per_trial,
    )


def build_tuner(cfg: SearchConfig, storage: str, name: str, tracking: TrackingCallback,
                verbose: bool = False, trial: Callable[..., None] = run_trial,
                max_concurrent: int | None = None,
                warm: warm_start.Warm | None = None) -> tune.Tuner:
    """Ray's and Optuna's own objects, composed: the whole search in one place.
    `max_concurrent`: the cluster's cap on multi-worker trials at once (search.max_concurrent
    when None); `warm`: what earlier searches give this one (search.warm_start)."""
    s = cfg.search
    warm = warm or warm_start.Warm()
    sampler = strategy.sampler(s)
    names = searched(cfg.space)
    points = [{k: v for k, v in p.items() if k in names}
              for p in [*warm.top, *s.points_to_evaluate]]
    searcher = OptunaSearch(
        space=DefineByRun(cfg.space), metric=s.metric, mode=s.mode, sampler=sampler,
        points_to_evaluate=[p for p in points if p], max_epoch=cfg.train.epochs,
        history=warm.history, study_attrs={warm_start.STUDY_CONFIG: public(cfg)},
        storage=optuna_search.storage(s.optuna_storage, local_folder(storage, name)),
        study_name=name,
    )
    scheduler = strategy.scheduler(cfg.scheduler, cfg.train.epochs, cfg)
    concurrent = min(s.max_concurrent, max_concurrent or s.max_concurrent)
    if cfg.scheduler.population_based:
        # The whole population at once: members take turns on the resources at each
        # interval (Ray's PBT pauses one that reaches it while others wait).
        concurrent = s.num_samples
    search_alg = lifecycle.generator(searcher, concurrent)
    if cfg.scheduler.population_based:  # each exploit tagged on its member's MLflow run
        tracking.exploits, tracking.pbt = scheduler.exploits, True
    life = lifecycle.Lifecycle(lifecycle.Limits.of(s), s.metric, s.mode, cfg.train.epochs,
                               search_alg)
    return tune.Tuner(
        trainable(cfg, f"{storage}/{name}", trial),
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=s.num_samples,
            metric=s.metric, mode=s.mode, trial_dirname_creator=trial_dirname,
            # One warm process runs trial after trial (search/trial/warm.py): no new process,
            # imports or dataset load per trial. Not for multi-worker trials: a trial that
            # ASHA stops must end its actor, which takes its Train run's workers with it.
            reuse_actors=not cfg.resources.distributed,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=1 if verbose else 0,
            stop=life.stopper(),  # when the search stops besides num_samples, and why
            callbacks=[
                full_disk.StopWhenFull(),  # first: before the others count a retry
                ResultLog(),  # each trial's result.json (Ray's JSON logger)
                tracking,
                CheckpointJanitor(),
                Progress(s.metric, s.mode, cfg.train.epochs, s.num_samples),
                *kept_state(cfg.scheduler, scheduler),
                optuna_search.KnownTrials(searcher, search_alg),  # the trials Ray restored
                life,
                results.PreloadTheEnd(model_logging=bool(cfg.mlflow.register_as)),
                # Multi-worker trials: their workers' placement groups freed as they end.
                *([placement.ReleaseWorkers()] if cfg.resources.distributed else []),
            ],
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            # Ray keeps every checkpoint; CheckpointJanitor deletes those no saved experiment
            # state names any more, so Ray can snapshot at its own (cost-bounded) period.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )


def kept_state(config: SchedulerConfig, scheduler: Any) -> list[tune.Callback]:
    """The callback that carries `scheduler`'s state in Ray's experiment snapshots, so
    that --resume keeps it (Ray rebuilds the scheduler empty): ASHA's rungs, PBT's members
    and lineage."""
    if config.name == "asha":
        return [RungState(scheduler)]
    if config.population_based:
        from search.pbt_scheduler import PBTState

        return [PBTState(scheduler)]
    return []


def library_settings(verbose: bool) -> None:
    """Settings of Ray and MLflow this command relies on (a user's own setting wins)."""
    env = os.environ.setdefault
    # Fail fast, and let the tracker's queue do the retrying, not minutes of HTTP backoff.
    env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    env("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    mlflow_settings()
    # Ray's loggers: result.json is kept (ResultLog, added in build_tuner); the CSV
    # copy and TensorBoard event files, which nothing here reads, are not written.
    env("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if not verbose:  # Ray's older reporter is silent at verbose=0; the newer one is not
        env("RAY_AIR_NEW_OUTPUT", "0")
        full_disk.quiet_ray()


@dataclass
class SearchResult:
    """What a search returns to Python (`run_search`); the CLI prints the same."""

    name: str
    path: str  # Ray's experiment folder (or URI)
    best_config: TrialConfig | None  # the winner as a single-run config; None: no model
    best: dict[str, Any] | None  # trial_id, outcome, epochs, value (of search.metric), params
    trials: Any  # every trial, best first: a pandas DataFrame, or a list of dicts
    parent_run_id: str  # the search's MLflow run
    tracking_uri: str  # credentials removed
    champion_uri: str | None  # models:/NAME@champion, when registered
    unregistered: str | None = None  # why mlflow.register_as was not registered, if not
    stop_reason: str = "num_samples"  # why it stopped: num_samples, time_budget, goal, patience

    @property
    def ok(self) -> bool:
        """Whether some trial produced a model."""
        return self.best is not None


def run_search(config: str | Path | SearchConfig, overrides: Sequence[str] = (), *,
               name: str | None = None, storage_path: str | None = None,
               tracking_uri: str | None = None, address: str | None = None,
               resume: bool = False, verbose: bool = False,
               show_progress: bool = True) -> SearchResult:
    """Run a search from Python: a config file's path or a `SearchConfig`, with `--set`
    style overrides (`"search.num_samples=16"`); the other arguments are the command
    line's options. Bad input raises `ConfigError` with the line the command would print.

    The progress lines go to the `search` logger; with `show_progress` and no handler of
    yours on it, they are printed. A Ray this call starts is stopped before it returns.
    """
    if show_progress and not logging.getLogger("search").handlers:
        setup_logging(verbose)
    args = argparse.Namespace(config=config, set=list(overrides), num_samples=None, name=name,
                              address=address, storage_path=storage_path,
                              tracking_uri=tracking_uri, resume=resume, verbose=verbose)
    with environ_kept():
        return search(args)


@contextmanager
def environ_kept() -> Iterator[None]:
    """`os.environ` as it was, afterwards: the libraries' settings a search makes
    (`library_settings`), and MLflow's own writes (`mlflow.set_tracking_uri` sets
    MLFLOW_TRACKING_URI, credentials included), end with the search."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k not in before]:
            del os.environ[key]
        os.environ.update(before)


def search(args: argparse.Namespace) -> SearchResult:
    """The search the command line (or `run_search`) asked for."""
    cfg, storage, name = resolve(args)
    preflight.check(cfg)  # here, not in every trial
    optuna_search.check_storage(cfg.search.optuna_storage)
    warm = None
    path = f"{storage}/{name}"
    if cfg.search.warm_start and not (args.resume and snapshot_taken(path)):
        warm = warm_start.load(cfg, local_folder(storage, name))
        for line in warm.lines:
            log.info("warm start: %s", line)
    tracking_uri = cfg.mlflow.tracking_uri or local_tracking_uri()
    # Saved in search.yaml (credentials removed): `search.deploy runs/NAME` finds MLflow there.
    cfg = cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(
        update={"tracking_uri": tracking_uri})})
    library_settings(args.verbose)
    check_tracking_uri(tracking_uri, register=bool(cfg.mlflow.register_as))
    ship = user_code.to_ship(cfg)
    tracking = tracking_callback(cfg, storage, name, tracking_uri)
    started_ray = not ray.is_initialized()
    if started_ray and cfg.ray.address is None:  # Ray will start here: its size is known
        cluster.check_local_resources(cfg.resources)
    tracker = tracking.open()  # imports MLflow in its writer thread while Ray starts
    try:
        # Workers load the dataset as they start; a task of the user's loads its own data.
        preload = cfg.data if cfg.train.task is None else None
        cluster.connect(cfg.ray.address, preload=preload, ship=ship, verbose=args.verbose)
        fits = cluster.check_resources(cfg.resources)
        if fits is not None and fits < cfg.search.max_concurrent:
            log.info("search.max_concurrent %d: the cluster has room for %d trials of %d "
                     "workers at once", cfg.search.max_concurrent, fits,
                     cfg.resources.workers_per_trial)
        tracker.start()  # the search will run: now MLflow may be written to
        tracker.wait_open()  # a search is not run untracked
        try:
            return _fit(args, cfg, storage, name, tracking, tracker, tracking_uri, fits, warm)
        except BaseException as e:
            # The parent run says why, and what is queued goes out in bounded time.
            full = full_disk.stopped(e, f"{storage}/{name}", name) if full_disk.is_full(e) else None
            tracker.fail_search(reason=driver_error(full or e))
            if full is not None:
                raise full from None
            raise
    finally:
        tracker.close(timeout_s=FAIL_DRAIN_S)  # delivered already on success: returns at once
        if started_ray and ray.is_initialized():
            cluster.disconnect()


def driver_error(e: BaseException) -> str:
    """The driver's failure in one line, with its type: `RuntimeError: ...` (the line Ray
    wraps into a TuneError's traceback, when it is one)."""
    line = error_line(e) if str(e) else ""
    head = line.split(":", 1)[0]
    if head.isidentifier() and head.endswith(("Error", "Exception", "Missing")):
        return line
    return f"{type(e).__name__}: {line}".rstrip(": ")


def _fit(args, cfg: SearchConfig, storage: str, name: str, tracking: TrackingCallback,
         tracker, tracking_uri: str, fits: int | None,
         warm: warm_start.Warm | None = None) -> SearchResult:
    path = f"{storage}/{name}"
    full_disk.atomic_copies()  # what Ray copies into storage is whole, or not there
    if args.resume and snapshot_taken(path):
        if "://" not in (cfg.search.optuna_storage or ""):
            optuna_search.mend_journal(cfg.search.optuna_storage, local_folder(storage, name))
        # Ray restores the searcher (with its Optuna study) and the callbacks' state; the
        # scheduler comes back as configured, and `kept_state`'s callback refills it (ASHA's
        # rungs, PBT's members and lineage).
        if "://" in (cfg.search.optuna_storage or ""):  # its password, for the unpickled study
            optuna_search.remember(cfg.search.optuna_storage)
        tuner = tune.Tuner.restore(path, trainable=trainable(cfg, path))
        resumed_with(tuner, cfg)
        if "://" not in storage:  # this run's rules, for the next --resume
            save_config(path, cfg)
    else:  # a new search, or one killed before Ray saved any state: started (again)
        if "://" not in storage:  # first, so that a search killed from here on resumes
            Path(path).mkdir(parents=True, exist_ok=True)
            save_config(path, cfg)
        tuner = build_tuner(cfg, storage, name, tracking, args.verbose, max_concurrent=fits,
                            warm=warm)
        if warm is not None:  # the parent run names its sources and what they gave
            tracker.tag_search(warm.tags())
    log.info("search %s: %d trials, results in %s, MLflow at %s", name,
             cfg.search.num_samples, path, redact(tracking_uri))
    grid = tuner.fit()
    stop_reason, stopped = lifecycle.why(tuner)
    tracker.tag_search({"stop_reason": stop_reason, "stopped": stopped})

    end_by = time.monotonic() + DRAIN_S  # all of the end's waits for MLflow together

    def left() -> float:
        return max(0.0, end_by - time.monotonic())

    rows = results.summarize(grid, cfg)
    best = next((r for r in rows if r.outcome in ("completed", "pruned")
                 and math.isfinite(r.value)), None)
    best_yaml, champion, crowned, why, unregistered = None, None, False, "", None
    failed = sum(r.outcome == "failed" for r in rows)
    folder = local_folder(storage, name)
    pbt = (results.PBTRecord.of(rows, cfg, best, tracking.exploits)
           if best is not None and cfg.scheduler.population_based else None)
    pictures = results.draw(rows, cfg, best.trial_id if best else None, folder / "plots", pbt)
    if best is not None:
        best_yaml = folder / BEST_CONFIG
        text = results.write_best_yaml(cfg, best, best_yaml, pbt.segments if pbt else ())
        if cfg.mlflow.register_as and result_checkpoint(best.result) is not None:
            if not tracker.drain(timeout_s=left()):  # the best trial's run must exist
                raise RuntimeError(f"MLflow: {tracker.pending} writes not delivered in "
                                   f"{DRAIN_S:.0f} s; the champion was not registered")
            champion, crowned, why, unregistered = _register(cfg, tracker, best, best_yaml)
        tracker.rank_trials([r.trial_id for r in rows],
                            best.trial_id if champion and crowned else None)
        top = [{"rank": i, "trial_id": r.trial_id, "outcome": r.outcome, "epochs": r.epochs,
                cfg.search.metric: r.value, **r.params} for i, r in enumerate(rows[:10], 1)]
        tracker.finish({"params": best.params, "metric": cfg.search.metric,
                        "value": best.value, "trial_id": best.trial_id,
                        "failed_trials": failed}, top, text,
                       status="FAILED" if failed else "FINISHED",
                       description=results.search_description(
                           rows, cfg, best, champion, best_yaml, pictures.importance_line(),
                           "" if crowned else why, stopped, pbt),
                       importances=pictures.importances,
                       plots=str(folder / "plots") if pictures.paths else None)
    else:
        tracker.fail_search(failed)
    tracker.close(timeout_s=left())
    results.print_summary(rows, cfg, best_yaml, tracking_uri, tracker.experiment_id, stopped,
                          pictures.importance_line(),
                          champion or (unregistered and f"{cfg.mlflow.register_as} not "
                                       "registered"), "" if crowned else why or unregistered)
    return SearchResult(
        name=name, path=path,
        best_config=trial_config(cfg, best.result.config) if best is not None else None,
        best=(None if best is None else {"trial_id": best.trial_id, "outcome": best.outcome,
                                         "epochs": best.epochs, "value": best.value,
                                         "params": best.params}),
        trials=results.table(rows, cfg.search.metric), parent_run_id=tracker.parent_run_id,
        tracking_uri=redact(tracking_uri), champion_uri=champion, unregistered=unregistered,
        stop_reason=stop_reason,
    )


def save_config(path: str, cfg: SearchConfig) -> None:
    """The search's config as `--resume` reads it (search.yaml, credentials removed)."""
    Path(path, SAVED_CONFIG).write_text(yaml.safe_dump(public(cfg), sort_keys=False))


def resumed_with(tuner: tune.Tuner, cfg: SearchConfig) -> None:
    """Give a restored search this run's rules: its callbacks come back as pickled when the
    search started (tuner.pkl)."""
    for callback in lifecycle.callbacks(tuner):
        if isinstance(callback, lifecycle.Lifecycle):
            callback.resume_with(lifecycle.Limits.of(cfg.search))
        elif isinstance(callback, Progress):
            callback.num_samples = cfg.search.num_samples


def _register(cfg: SearchConfig, tracker, best, best_yaml: Path
              ) -> tuple[str | None, bool, str, str | None]:
    """The best trial's model registered and judged against the champion: its URI, whether
    it became the champion and why not; or, when it could not be stored whole (a full
    artifact store, a server that failed), no version at all and the reason."""
    winner = trial_config(cfg, best.result.config)
    name = cfg.mlflow.register_as
    try:
        version = results.register_champion(tracker, best, name, winner,
                                            results.model_description(cfg, best, best_yaml))
    except Exception as e:  # noqa: BLE001  (any failure: said in one line, nothing registered)
        reason = driver_error(e)
        log.error("%s not registered: %s", name, reason)
        return None, False, "", reason
    judged = promotion.Judged(cfg.search.metric, cfg.search.mode, best.value,
                              promotion.judged_on(winner))
    crowned, why = promotion.promote(tracker.client, name, version, judged, cfg.mlflow.promote)
    alias = promotion.CHAMPION if crowned else promotion.CHALLENGER
    log.info("registered %s version %s as @%s%s", name, version, alias,
             "" if crowned else f": {why}")
    return f"models:/{name}@{alias}", crowned, why, None


def main(argv: list[str] | None = None) -> int:
    """`python -m search.run`: the search, as a command; exit 1 when no trial made a model,
    or the model could not be registered."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    result = search(args)
    return 0 if result.ok and not result.unregistered else 1


if __name__ == "__main__":
    run_main(main, fast_exit=True)
