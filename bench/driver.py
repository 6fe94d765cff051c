"""Orchestration alone: 1,000 trials whose epochs compute nothing, through our search's driver.

    python -m bench.driver                        # 1000 trials, 32 at a time, 9 epochs, ASHA
    python -m bench.driver --trials 200 --concurrency 8
    python -m bench.driver --suggest-only --trials 3000

The search is the one `python -m search.run` builds (`search.run.build_tuner`: Ray Tune's
loop, our OptunaSearch with a seeded multivariate TPE, ASHA with its rungs kept in Ray's
experiment state, the MLflow writer on SQLite, the checkpoint janitor, Ray's experiment
snapshots at their default period) with one change: each trial computes nothing. It reports
a made-up val_acc per epoch (a smooth function of lr and beta1 that rises with the epoch, so
that TPE and ASHA have something to act on) and writes a small checkpoint at the same
epochs a real trial would (`search.trial.checkpoints.CheckpointPolicy`). Trials ask for a small
fraction of a CPU, so that `--concurrency` of them run at once on this machine.

Printed: trials/s and results/s over the whole run; the driver's CPU time per result (this
process, every thread: Tune's loop, Optuna, ASHA, snapshots, the MLflow writer); Optuna's
suggest latency as the study grows (median per window of trials), and the time and size of
Ray's experiment snapshots as the experiment grows. `--suggest-only` times Optuna's ask/tell
alone, without Ray, up to `--trials`. From the driver's CPU per result, the last lines give
how many concurrent trials of a 60 s epoch one driver core sustains. Writes bench/driver.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("driver.json")
CONF = Path(__file__).resolve().parent.parent / "conf" / "digits.yaml"
EPOCH_S = 60.0  # the GPU epoch the capacity estimate is for


def made_up_accuracy(params: dict[str, float], epoch: int) -> float:
    """A val_acc that depends on lr and beta1 the way real ones do, and rises with epochs."""
    quality = math.exp(-((math.log10(params["lr"]) + 2.5) ** 2)) * (0.5 + params["beta1"] / 2)
    return quality * (1 - 0.6 ** epoch)


def zero_compute_trial(params: dict[str, Any], base: Any, rungs: tuple[int, ...] = (),
                       checkpoint_period_s: float | None = None) -> None:
    """`search.trial.trainable.run_trial`'s signature and reporting, no training, no torch."""
    from ray import tune

    from search.space import trial_config
    from search.trial.checkpoints import CheckpointPolicy

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # as run_trial does
    cfg = trial_config(base, params)
    sample = {"lr": cfg.optimizer.lr, "beta1": cfg.optimizer.beta1}
    checkpoint = tune.get_checkpoint()
    start = json.loads((Path(checkpoint.path) / "state.json").read_text())["epoch"] \
        if checkpoint else 0
    policy = CheckpointPolicy(cfg.train.epochs, rungs, checkpoint_period_s)
    for epoch in range(start + 1, cfg.train.epochs + 1):
        metrics = {"epoch": epoch, "val_acc": made_up_accuracy(sample, epoch),
                   "train_loss": 1.0 / epoch, "diverged": False}
        now = time.perf_counter()
        if not policy.due(epoch, now):
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        policy.written(time.perf_counter(), time.perf_counter() - now)


def timed(cls: type, name: str, log: list, size=None) -> None:
    """Wrap `cls.name` to append (its object's size, wall s, this thread's CPU s) to `log`."""
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            took = (time.perf_counter() - wall, time.thread_time() - cpu)
            log.append((size(self) if size else 0, *took))  # sized after the timing

    setattr(cls, name, wrapper)


def windows(log: list[tuple], edges: list[int]) -> list[dict]:
    """Median wall and CPU ms per call, in windows of the size (trials) at call time."""
    rows = []
    for lo, hi in zip([0, *edges], edges, strict=False):
        inside = [entry[1:] for entry in log if lo < entry[0] <= hi]
        if inside:
            rows.append({"trials": hi, "calls": len(inside),
                         "median_ms": 1000 * statistics.median(w for w, *_ in inside),
                         "median_cpu_ms": 1000 * statistics.median(c[-1] for c in inside),
                         "max_ms": 1000 * max(w for w, *_ in inside)})
    return rows


def suggest_only(trials: int) -> list[tuple[int, float]]:
    """Optuna's ask + tell alone, the search's sampler and space, most trials pruned."""
    import optuna

    from search.config import SpaceConfig
    from search.space import DefineByRun

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = DefineByRun(SpaceConfig())
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=0, multivariate=True, n_startup_trials=4))
    log = []
    for n in range(trials):
        start, cpu = time.perf_counter(), time.thread_time()
        trial = study.ask()
        space(trial)
        log.append((n, time.perf_counter() - start, time.thread_time() - cpu))
        value = made_up_accuracy({"lr": trial.params["lr"], "beta1": trial.params["beta1"]}, 3)
        trial.report(value, 1)
        study.tell(trial, value if n % 3 == 0 else None,
                   state=None if n % 3 == 0 else optuna.trial.TrialState.PRUNED)
    return log


def run_search(args: argparse.Namespace, work: Path) -> dict:
    """The search's driver, in this process, with zero-compute trials."""
    import ray
    from ray.tune.execution.tune_controller import TuneController

    from search import config as config_
    from search.optuna_search import OptunaSearch
    from search.run import build_tuner, library_settings, tracking_callback

    cfg = config_.load(CONF, [
        f"search.num_samples={args.trials}", f"search.max_concurrent={args.concurrency}",
        f"train.epochs={args.epochs}", "scheduler.grace_period=1",
        f"resources.cpus_per_trial={1 / args.concurrency / 2}", "mlflow.register_as=null",
        "search.points_to_evaluate=[]"]).model_copy(update={"name": "driver"})
    library_settings(verbose=False)
    suggest_log: list = []
    snapshot_log: list = []
    timed(OptunaSearch, "suggest", suggest_log,
          size=lambda s: len(s._ot_study.get_trials(deepcopy=False)))
    timed(TuneController, "save_to_dir", snapshot_log, size=lambda c: len(c.get_trials()))

    tracking = tracking_callback(cfg, str(work / "runs"), "driver",
                                 f"sqlite:///{work / 'mlflow.db'}")
    tracking.open()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    tracking.open().start()
    tuner = build_tuner(cfg, str(work / "runs"), "driver", tracking, trial=zero_compute_trial)
    gc_time = [0.0, 0]  # seconds in the collector, full collections

    def on_gc(phase: str, info: dict, started: list = [0.0]) -> None:  # noqa: B006
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            gc_time[0] += time.perf_counter() - started[0]
            gc_time[1] += info["generation"] == 2

    gc.callbacks.append(on_gc)
    cpu, wall = time.process_time(), time.perf_counter()
    grid = tuner.fit()
    tracking.open().drain(timeout_s=600)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    ray.shutdown()
    exp = work / "runs" / "driver"
    results = sum(len(f.read_text().splitlines()) for f in exp.glob("trial_*/result.json"))
    states = sorted(exp.glob("experiment_state-*.json"))
    return {
        "trials": len(grid), "results": results, "wall_s": wall, "driver_cpu_s": cpu,
        "trials_per_s": len(grid) / wall, "results_per_s": results / wall,
        "driver_cpu_ms_per_result": 1000 * cpu / max(results, 1),
        "suggest": suggest_log, "snapshots": snapshot_log,
        "snapshot_bytes": states[-1].stat().st_size if states else 0,
        "gc_s": gc_time[0], "gc_full_collections": gc_time[1],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.driver", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--suggest-only", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    edges = [e for e in (50, 100, 250, 500, 1000, 2000, 3000, 5000) if e < args.trials]
    edges.append(args.trials)
    report: dict[str, Any] = {"machine": machine, "date": time.strftime("%Y-%m-%d"),
                              "args": vars(args) | {"out": str(args.out)}}
    alone = suggest_only(args.trials) if args.suggest_only else None
    if alone is not None:
        report["suggest_alone"] = windows(alone, edges)
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-driver-"))
        run = run_search(args, work)
        report.update({k: v for k, v in run.items() if k not in ("suggest", "snapshots")})
        report["suggest"] = windows(run["suggest"], edges)
        report["snapshots"] = windows(run["snapshots"], edges)

    print(f"\nbench.driver on {machine}: {args.trials} trials, {args.epochs} epochs each, "
          + ("Optuna ask/tell alone" if alone is not None
             else f"{args.concurrency} at a time, zero-compute trials, ASHA, MLflow on SQLite"))
    if alone is None:
        print(f"  wall {report['wall_s']:.1f} s: {report['trials_per_s']:.1f} trials/s, "
              f"{report['results_per_s']:.1f} results/s ({report['results']} results)")
        print(f"  driver CPU {report['driver_cpu_s']:.1f} s: "
              f"{report['driver_cpu_ms_per_result']:.1f} ms per result; last snapshot "
              f"{report['snapshot_bytes'] / 1e6:.2f} MB; Python's garbage collector "
              f"{report['gc_s']:.1f} s ({report['gc_full_collections']} full collections)")
    for key, title in (("suggest_alone", "Optuna suggest alone"), ("suggest", "Optuna suggest"),
                       ("snapshots", "experiment snapshot")):
        if key in report:
            print(f"  {title}, by trials so far (median wall / CPU ms per call):")
            print("    " + "  ".join(f"<={r['trials']}: {r['median_ms']:.1f}/"
                                     f"{r['median_cpu_ms']:.1f}" for r in report[key]))
    if alone is None:
        # A result per epoch: N concurrent trials of a 60 s epoch send N/60 results a second.
        per_result = report["driver_cpu_ms_per_result"] / 1000
        report["sustained_trials_60s_epoch"] = EPOCH_S / per_result
        print(f"  one driver core handles 1 / {per_result * 1000:.1f} ms = "
              f"{1 / per_result:.0f} results/s: about "
              f"{report['sustained_trials_60s_epoch']:,.0f} concurrent trials of a 60 s epoch")
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
