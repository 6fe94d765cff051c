"""Overhead against the peers: the same search through `search.run`, stock Ray Tune, Optuna alone.

    python -m bench.peers                   # 2 seeds, 12 trials each, 2 at a time, target 0.985
    python -m bench.peers --seeds 3 --samples 16 --ways ours,optuna
    python -m bench.peers --set train.epochs=5 --out /tmp/peers.json

Each seed runs one search three ways on the embedded default conf/digits.yaml (digits, cnn,
15 epochs, the project's trainer `search.trial.trainer.train` with its own Adam): the same space,
`points_to_evaluate`, TPE seed, ASHA rungs (grace period, reduction factor) and number of
trials at a time. Each way is a fresh subprocess in a fresh temporary folder, so every wall
time includes Python's imports and, for Ray, starting and stopping Ray:

- ours: `python -m search.run conf/digits.yaml --name NAME --storage-path WORK/runs
  --tracking-uri sqlite:///WORK/mlflow.db --num-samples N --set search.seed=S
  --set search.max_concurrent=C`, champion registration included. Its epochs are read
  afterwards from MLflow: the `val_acc` history of the search's child runs, stamped by the
  driver as each result arrives.
- stock: `python -m bench.peers --run stock ...`: `tune.Tuner` with Ray's own `OptunaSearch`
  (a define-by-run function with the same bounds, a seeded multivariate TPE),
  `ASHAScheduler`, `MLflowLoggerCallback` (sqlite:///WORK/stock.db), a function trainable
  calling the same `train` with `tune.report` and a checkpoint every epoch (2 kept), 1 CPU a
  trial, `ray.init(num_cpus=C)`. A driver-side Tune callback stamps each epoch's result.
- optuna: `python -m bench.peers --run optuna ...`: one process, no Ray, no MLflow;
  `study.optimize(n_jobs=C)` (threads, `torch.set_num_threads(1)`), the same TPE sampler,
  `SuccessiveHalvingPruner` with the same rungs, `enqueue_trial` for the same points.
  Its threads share torch's global RNG (`train` seeds it and draws the model's initial
  weights from it), so its trials' numbers differ from the Ray ways', which match each
  other bit for bit: compare its wall time and s/epoch, not its best val_acc.

Wall time runs from just before `Popen` to the process's exit. Per way and seed the table
shows: wall seconds; trial-epochs trained (epoch results, over all trials); the best val_acc
seen; seconds from the start until the first epoch of any trial with `val_acc >= target` and
the trial-epochs until then (`*`: never reached); wall seconds per trial-epoch; the fixed
cost at the ends: start to the first epoch result, and the last epoch result to exit. Then
the wall-time ratios ours/optuna and ours/stock per seed and their medians, against the
targets: ours <= 1.5x Optuna alone, ours <= 0.33x stock Ray Tune. The ways run interleaved
per seed (ours, stock, optuna, next seed), so machine noise hits all alike. Subprocess
output goes to WORK/<way>.log. All three get RAY_DEDUP_LOGS=1,
MLFLOW_DISABLE_TELEMETRY=true and RAY_USAGE_STATS_ENABLED=0, so no way waits on a network
this machine may not have. Writes bench/peers.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("peers.json")
ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "digits.yaml"
WAYS = ("ours", "stock", "optuna")
EVENTS = "events.json"  # what --run stock/optuna writes: [[time.time(), trial, epoch, val_acc]]
TARGETS = {"optuna": 1.5, "stock": 0.33}  # ours' wall time at most this times theirs
TIMEOUT_S = 3600.0

Event = tuple[float, str, int, float]  # wall clock s, trial, epoch, val_acc


# ---------------------------------------------------------------- the config, shared


def load_config(samples: int, concurrency: int, seed: int, sets: list[str]) -> Any:
    """conf/digits.yaml with the user's --set, then N trials, C at a time, TPE seed S."""
    from search import config

    return config.load(CONF, [*sets, f"search.num_samples={samples}",
                              f"search.max_concurrent={concurrency}", f"search.seed={seed}"])


def searched(cfg: Any) -> dict[str, tuple[float, float, bool]]:
    """The sampled hyperparameters: name -> (low, high, log), as DefineByRun suggests them."""
    out = {}
    for name in type(cfg.space).model_fields:
        r = getattr(cfg.space, name)
        if not r.fixed:
            out[name] = (r.low, r.high, r.log)
    return out


def fixed(cfg: Any) -> dict[str, float]:
    """The hyperparameters the space pins to one value."""
    return {name: getattr(cfg.space, name).bounds()[0]
            for name in type(cfg.space).model_fields if getattr(cfg.space, name).fixed}


def points(cfg: Any) -> list[dict[str, float]]:
    """cfg.search.points_to_evaluate restricted to the sampled names, as search.run does."""
    names = searched(cfg)
    kept = [{k: v for k, v in p.items() if k in names} for p in cfg.search.points_to_evaluate]
    return [p for p in kept if p]


def write_events(work: Path, events: list[Event]) -> None:
    Path(work, EVENTS).write_text(json.dumps(sorted(events)))


# ---------------------------------------------------------------- stock Ray Tune


def stock_space(trial: Any, bounds: dict[str, tuple[float, float, bool]],
                pinned: dict[str, float]) -> dict[str, float]:
    """A define-by-run space, as a Ray Tune + Optuna user writes one."""
    for name, (low, high, log) in bounds.items():
        trial.suggest_float(name, low, high, log=log)
    return dict(pinned)


def stock_trainable(config: dict[str, Any], base: Any) -> None:
    """A plain function trainable: the project's trainer, a Tune checkpoint every epoch."""
    import torch
    from ray import tune

    from search.space import trial_config
    from search.trial.trainer import train

    def report(metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        if checkpoint is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(checkpoint, Path(d) / "checkpoint.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    resume = None
    if (ckpt := tune.get_checkpoint()) is not None:
        with ckpt.as_directory() as d:
            resume = torch.load(Path(d) / "checkpoint.pt", weights_only=True)
    train(trial_config(base, config), report, resume=resume)


def event_log(work: Path) -> Any:
    """A Tune callback in the driver that stamps each epoch result with the wall clock."""
    from ray import tune

    class EventLog(tune.Callback):
        def __init__(self, work: Path) -> None:
            self.work = work
            self.events: list[Event] = []

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            if "epoch" in result:
                self.events.append((time.time(), trial.trial_id, int(result["epoch"]),
                                    float(result["val_acc"])))

        def on_experiment_end(self, trials, **info) -> None:
            write_events(self.work, self.events)

    return EventLog(work)


def run_stock(cfg: Any, work: Path) -> None:
    """The search with Ray Tune's own parts; epoch events to WORK/events.json."""
    import optuna
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    s = cfg.search
    ray.init(num_cpus=s.max_concurrent, include_dashboard=False)
    searcher = OptunaSearch(
        space=functools.partial(stock_space, bounds=searched(cfg), pinned=fixed(cfg)),
        metric=s.metric, mode=s.mode,
        sampler=optuna.samplers.TPESampler(seed=s.seed, multivariate=True,
                                           n_startup_trials=s.n_startup_trials),
        points_to_evaluate=points(cfg),
    )
    scheduler = ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs,
                              grace_period=cfg.scheduler.grace_period,
                              reduction_factor=cfg.scheduler.reduction_factor)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(stock_trainable, base=cfg.trial()), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=s.num_samples,
                                    max_concurrent_trials=s.max_concurrent,
                                    metric=s.metric, mode=s.mode),
        run_config=tune.RunConfig(
            name="stock", storage_path=str(work / "stock"),
            callbacks=[MLflowLoggerCallback(tracking_uri=f"sqlite:///{work / 'stock.db'}",
                                            experiment_name=f"stock-{s.seed}"),
                       event_log(work)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    tuner.fit()
    ray.shutdown()


# ---------------------------------------------------------------- Optuna alone


def run_optuna(cfg: Any, work: Path) -> None:
    """The search with Optuna alone: C threads, SuccessiveHalvingPruner, no Ray, no MLflow."""
    import optuna
    import torch

    from search.space import DefineByRun, trial_config
    from search.trial.trainer import train

    torch.set_num_threads(1)  # one core a thread, as one Ray trial per CPU gets
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s, sched = cfg.search, cfg.scheduler
    rf = sched.reduction_factor
    study = optuna.create_study(
        direction="maximize" if s.mode == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=s.seed, multivariate=True,
                                           n_startup_trials=s.n_startup_trials),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=sched.grace_period, reduction_factor=int(rf) if rf == int(rf) else rf),
    )
    for point in points(cfg):
        study.enqueue_trial(point)
    space = DefineByRun(cfg.space)
    events: list[Event] = []
    lock = threading.Lock()

    def objective(trial: optuna.Trial) -> float:
        pinned = space(trial)
        trial_cfg = trial_config(cfg, {**trial.params, **pinned})

        def report(metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
            with lock:
                events.append((time.time(), str(trial.number), int(metrics["epoch"]),
                               float(metrics["val_acc"])))
            trial.report(metrics[s.metric], metrics["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        return train(trial_cfg, report)[s.metric]

    study.optimize(objective, n_trials=s.num_samples, n_jobs=s.max_concurrent)
    write_events(work, events)


# ---------------------------------------------------------------- ours, read from MLflow


def ours_events(work: Path, experiment: str) -> list[Event]:
    """Every val_acc the search's child runs logged, with MLflow's wall-clock timestamp."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    return sorted(  # the child runs: one a trial, nested under the search's parent run
        (m.timestamp / 1000, r.data.tags.get("trial_id", r.info.run_id), m.step, m.value)
        for r in runs if r.data.tags.get("mlflow.parentRunId")
        for m in client.get_metric_history(r.info.run_id, "val_acc")
    )


def ours_warm_startups(work: Path, experiment: str) -> list[float]:
    """Per trial that ran on an already warm process: the seconds from the previous
    trial's last result (on that process) to this trial's first epoch starting.

    Processes come from Ray's result.json files (each result names its pid); times from
    MLflow's metric timestamps (when the driver received a result) less the first epoch's
    own `epoch_s`, so the gap is what the trial cost beyond its training: the driver's
    turnover, the reset of the process and the trial's set-up."""
    from mlflow.tracking import MlflowClient

    pid_of = {}
    for result in (work / "runs").glob(f"{experiment}/trial_*/result.json"):
        first = json.loads(result.read_text().splitlines()[0])
        pid_of[first["trial_id"]] = first["pid"]
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    spans = []  # (pid, first epoch start, last result)
    for run in client.search_runs([exp.experiment_id], max_results=10000):
        trial_id = run.data.tags.get("trial_id")
        if trial_id not in pid_of:
            continue
        acc = sorted(client.get_metric_history(run.info.run_id, "val_acc"), key=lambda m: m.step)
        epoch_s = sorted(client.get_metric_history(run.info.run_id, "epoch_s"),
                         key=lambda m: m.step)
        if acc and epoch_s:
            spans.append((pid_of[trial_id], acc[0].timestamp / 1000 - epoch_s[0].value,
                          acc[-1].timestamp / 1000))
    gaps = []
    for pid in {s[0] for s in spans}:
        mine = sorted(s[1:] for s in spans if s[0] == pid)
        gaps += [start - prev_end for (_, prev_end), (start, _) in zip(mine, mine[1:],
                                                                       strict=False)]
    return gaps


# ---------------------------------------------------------------- running and measuring


def command(way: str, seed: int, args: argparse.Namespace, work: Path) -> list[str]:
    """The command line of one way for one seed."""
    sets = [arg for item in args.sets for arg in ("--set", item)]
    if way == "ours":
        return [sys.executable, "-m", "search.run", str(CONF), "--name", f"peers-s{seed}",
                "--storage-path", str(work / "runs"),
                "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}",
                "--num-samples", str(args.samples), "--set", f"search.seed={seed}",
                "--set", f"search.max_concurrent={args.concurrency}", *sets]
    return [sys.executable, "-m", "bench.peers", "--run", way, "--seed", str(seed),
            "--samples", str(args.samples), "--concurrency", str(args.concurrency),
            "--work", str(work), *sets]


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def measure(way: str, seed: int, args: argparse.Namespace, experiment: str) -> dict[str, Any]:
    """Run one way for one seed in a fresh folder; its wall time and epoch events."""
    work = Path(tempfile.mkdtemp(prefix=f"peers-{way}-s{seed}-"))
    log = work / f"{way}.log"
    env = {**os.environ, "RAY_DEDUP_LOGS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_USAGE_STATS_ENABLED": "0"}
    print(f"seed {seed}: {way} ... ", end="", flush=True)
    with log.open("w") as out:
        t0 = time.time()
        proc = subprocess.Popen(command(way, seed, args, work), cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        t1 = time.time()
    cell: dict[str, Any] = {"work": str(work), "log": str(log), "rc": rc}
    if rc != 0:
        print(f"failed (exit {rc}); log {log}:\n{tail(log)}", flush=True)
        return cell
    events = (ours_events(work, experiment) if way == "ours"
              else [tuple(e) for e in json.loads((work / EVENTS).read_text())])
    cell.update(summarize(events, t0, t1, args.target))
    if way == "ours":
        gaps = ours_warm_startups(work, experiment)
        cell["warm_startup_s"] = statistics.median(gaps) if gaps else None
        cell["warm_startup_max_s"] = max(gaps) if gaps else None
    print(f"{cell['wall_s']:.1f}s", flush=True)
    return cell


def summarize(events: list[Event], t0: float, t1: float, target: float) -> dict[str, Any]:
    """Wall time, trial-epochs, best, time and epochs to target, fixed cost at both ends."""
    events = sorted(events)
    wall = t1 - t0
    hit = next((i for i, e in enumerate(events, start=1) if e[3] >= target), None)
    return {
        "wall_s": wall,
        "trial_epochs": len(events),
        "trials": len({e[1] for e in events}),
        "best": max((e[3] for e in events), default=0.0),
        "reached": hit is not None,
        "to_target_s": events[hit - 1][0] - t0 if hit else None,
        "to_target_epochs": hit,
        "s_per_epoch": wall / len(events) if events else None,
        "start_to_first_epoch_s": events[0][0] - t0 if events else None,
        "last_epoch_to_exit_s": t1 - events[-1][0] if events else None,
    }


def ratio(a: dict[str, Any], b: dict[str, Any], key: str = "wall_s") -> float | None:
    if a.get(key) is None or b.get(key) is None:
        return None
    return a[key] / b[key]


def show(rows: list[dict[str, Any]], ways: list[str], args: argparse.Namespace,
         machine: str) -> dict[str, Any]:
    """Print the table per seed and the median ratios; return the medians."""
    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    print(f"\nbench.peers on {machine}: conf/digits.yaml, {args.samples} trials a search, "
          f"{args.concurrency} at a time, target val_acc {args.target}")
    if args.sets:
        print("overrides: " + "  ".join(args.sets))
    print(f"{'seed':>4s}  {'way':6s}  {'wall s':>7s}  {'epochs':>6s}  {'best':>6s}  "
          f"{'to target':>15s}  {'s/epoch':>7s}  {'start->1st':>10s}  {'last->exit':>10s}")
    for r in rows:
        for way in ways:
            c = r[way]
            if "wall_s" not in c:
                print(f"{r['seed']:4d}  {way:6s}  failed (exit {c['rc']}), log {c['log']}")
                continue
            target = (f"{c['to_target_s']:6.1f}s {c['to_target_epochs']:4d}ep " if c["reached"]
                      else f"{'*':>15s}")
            print(f"{r['seed']:4d}  {way:6s}  {c['wall_s']:7.1f}  {c['trial_epochs']:6d}  "
                  f"{c['best']:6.4f}  {target:>15s}  {num(c['s_per_epoch'], '7.3f')}  "
                  f"{num(c['start_to_first_epoch_s'], '10.1f')}  "
                  f"{num(c['last_epoch_to_exit_s'], '10.1f')}")
        for peer in ("optuna", "stock"):
            if "ours" in ways and peer in ways:
                print(f"{'':4s}  ours/{peer}: wall {num(r[f'wall_ours/{peer}'], '.2f')}, "
                      f"s/epoch {num(r[f's_per_epoch_ours/{peer}'], '.2f')}")
    print("(* = target never reached; epochs = trial-epochs trained; start->1st and last->exit"
          " = fixed cost from the command's start to its first epoch result, and from its last"
          " to its exit)")
    medians: dict[str, Any] = {}
    if "ours" in ways:
        warm = [r["ours"]["warm_startup_s"] for r in rows
                if r["ours"].get("warm_startup_s") is not None]
        medians["ours_warm_startup_s"] = statistics.median(warm) if warm else None
        print(f"ours, per-trial start-up on a warm process (previous trial's last result to "
              f"this trial's first epoch), median over seeds of per-seed medians: "
              f"{num(medians['ours_warm_startup_s'], '.3f')} s (target <= 0.3 s)")
    for peer in ("optuna", "stock"):
        if "ours" not in ways or peer not in ways:
            continue
        walls = [r[f"wall_ours/{peer}"] for r in rows if r[f"wall_ours/{peer}"] is not None]
        per = [r[f"s_per_epoch_ours/{peer}"] for r in rows
               if r[f"s_per_epoch_ours/{peer}"] is not None]
        wall = statistics.median(walls) if walls else None
        medians[f"wall_ours/{peer}"] = wall
        medians[f"s_per_epoch_ours/{peer}"] = statistics.median(per) if per else None
        verdict = ("-" if wall is None else "met" if wall <= TARGETS[peer] else "NOT met")
        print(f"median over {len(walls)} seeds, ours / {peer}: wall time "
              f"{num(wall, '.2f')}x (target <= {TARGETS[peer]}x: {verdict}), "
              f"s per trial-epoch {num(medians[f's_per_epoch_ours/{peer}'], '.2f')}x")
    return medians


def child(args: argparse.Namespace) -> None:
    """`--run stock|optuna`: one search, in this process."""
    cfg = load_config(args.samples, args.concurrency, args.seed, args.sets)
    (run_stock if args.run == "stock" else run_optuna)(cfg, args.work)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--target", type=float, default=0.985)
    p.add_argument("--ways", default=",".join(WAYS), help="comma-separated: ours,stock,optuna")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every way (repeatable)")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S,
                   help="seconds one way may run before it is killed")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--run", choices=("stock", "optuna"), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run:
        child(args)
        return 0
    ways = [w for w in args.ways.split(",") if w]
    if unknown := set(ways) - set(WAYS):
        p.error(f"--ways: unknown {', '.join(sorted(unknown))}; known: {', '.join(WAYS)}")
    cfg = load_config(args.samples, args.concurrency, 0, args.sets)  # fail before any run
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    rows = []
    for seed in range(args.seeds):
        row: dict[str, Any] = {"seed": seed}
        for way in ways:
            row[way] = measure(way, seed, args, cfg.mlflow.experiment or f"peers-s{seed}")
        for peer in ("optuna", "stock"):
            if "ours" in ways and peer in ways:
                row[f"wall_ours/{peer}"] = ratio(row["ours"], row[peer])
                row[f"s_per_epoch_ours/{peer}"] = ratio(row["ours"], row[peer], "s_per_epoch")
        rows.append(row)
    medians = show(rows, ways, args, machine)
    args.out.write_text(json.dumps({
        "machine": machine, "processor": platform.processor(), "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "samples": args.samples,
        "concurrency": args.concurrency, "target": args.target, "ways": ways,
        "overrides": args.sets, "targets": {f"wall_ours/{k}": v for k, v in TARGETS.items()},
        "rows": rows, "medians": medians,
    }, indent=1))
    print(f"wrote {args.out}")
    return 0 if all("wall_s" in r[w] for r in rows for w in ways) else 1


if __name__ == "__main__":
    sys.exit(main())
