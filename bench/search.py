"""Search efficiency: searchers and schedulers replayed against learning-curve tables.

    python -m bench.search                              # every table in bench/curves/, 50 seeds
    python -m bench.search --tasks digits --seeds 100 --grace 2 --rf 3
    python -m bench.search --sweep                      # TPE+ASHA over grace periods and factors
    python -m bench.search --live --seeds 3             # live searches: the default vs random
    python -m bench.search --live --tasks digits digits28 --strategies default pbt --seeds 5
    python -m bench.search --warm                       # warm start (bench/warm.py)

Replay (bench/replay.py): each method runs `--seeds` times against each table (bench/curves.py
builds them from real training) with the live search's own Optuna sampler, OptunaSearch and
Ray scheduler, `--concurrent` trials at a time on a simulated clock charged with the
table's measured epoch seconds and per-trial overhead. A run stops when some result reaches
the highest target or `--budget` trial-epochs are spent. Targets are the 90th, 97th and
99th percentiles of the table's final accuracies. Printed per method and target: the median
cost to reach the target over seeds (trial-epochs and seconds; a run that never reaches it
costs infinity), its ratio to random search's median with a 95% bootstrap interval over seeds,
the expected running time (ERT: all cost spent over the runs that reached the target), and
the share of runs that reached it. Also printed: how well early epochs rank configurations
(Spearman correlation with the final accuracy) and what an oracle pruner could save at best.
Writes bench/search.json and bench/search-<task>.png (median best-so-far against trial-epochs
and against seconds, with the interquartile band).

`--live`: searches through `search.run` on digits or digits28 (by default the chosen default,
random+ASHA, against random search without pruning; `--strategies default pbt`: against
PBT), costs read from MLflow, targets from the table's finals; also each search's best
val_acc within PBT's trial-epochs (`--population` members times the table's epochs).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import curves
from bench import replay as R
from search.config import Range, SpaceConfig

OUT = Path(__file__).with_name("search.json")
CONF = Path(__file__).resolve().parent.parent / "conf" / "digits.yaml"
QUANTILES = (0.90, 0.97, 0.99)


def methods(grace: int, rf: float, startup: int) -> list[R.Method]:
    """The methods compared: random search, model-based samplers, and TPE with pruning."""
    return [
        R.method("random", "random"),
        R.method("tpe", "tpe", n_startup_trials=startup),
        R.method("gp", "gp", n_startup_trials=startup),
        R.method("random+asha", "random", "asha", grace_period=grace, reduction_factor=rf),
        R.method("tpe+asha", "tpe", "asha", n_startup_trials=startup, grace_period=grace,
                 reduction_factor=rf),
        R.method("tpe+hyperband", "tpe", "asha", n_startup_trials=startup,
                 grace_period=grace, reduction_factor=rf, brackets=3),
        R.method("random+hyperband", "random", "asha", grace_period=grace,
                 reduction_factor=rf, brackets=3),
    ]


def sweep(startup: int) -> list[R.Method]:
    """Random and TPE with ASHA over grace periods and reduction factors; TPE's start-up
    trials; eps fixed at Adam's 1e-8 instead of searched."""
    out = [R.method("random", "random")]
    for sampler in ("random", "tpe"):
        for grace in (1, 2):
            for rf in (2, 3, 4):
                out.append(R.method(f"{sampler}+asha g{grace} rf{rf}", sampler, "asha",
                                    n_startup_trials=startup, grace_period=grace,
                                    reduction_factor=rf))
    for n in (8, 16):
        out.append(R.method(f"tpe+asha g1 rf3 n{n}", "tpe", "asha", n_startup_trials=n,
                            grace_period=1, reduction_factor=3))
    fixed_eps = SpaceConfig(eps=Range(value=1e-8))
    for sampler in ("random", "tpe"):
        out.append(R.method(f"{sampler}+asha g1 rf3 eps fixed", sampler, "asha",
                            n_startup_trials=startup, grace_period=1, reduction_factor=3,
                            space=fixed_eps))
    return out


_TABLE: R.Table | None = None


def _load(path: str) -> None:
    global _TABLE
    import warnings

    warnings.filterwarnings("ignore")
    _TABLE = R.table(curves.load(path))


def _one(job: tuple[R.Method, int, int, int, float]) -> dict[str, Any]:
    """One replayed search: its results as (trial-epochs, seconds, best so far)."""
    m, seed, concurrent, budget, stop_at = job
    trace = R.replay(_TABLE, m, seed, concurrent=concurrent, budget_epochs=budget,
                     stop_at=stop_at)
    best, curve = -math.inf, []
    for _, _, value, epochs, seconds in trace.results:
        best = max(best, value)
        curve.append((epochs, seconds, best))
    return {"method": m.name, "seed": seed, "curve": curve, "trials": len(trace.trials),
            "pruned": sum(t.stopped for t in trace.trials)}


def cost(curve: list[tuple[int, float, float]], target: float) -> tuple[float, float] | None:
    """(trial-epochs, seconds) at the first best-so-far reaching `target`; None: never."""
    for epochs, seconds, best in curve:
        if best >= target:
            return float(epochs), seconds
    return None


def median_inf(values: list[float]) -> float:
    """The median, with inf for runs that never reached the target."""
    return float(np.median(np.array(values, dtype=float)))


def bootstrap_ratio(a: list[float], b: list[float], reps: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """95% interval of median(a) / median(b), seeds resampled independently."""
    rng = np.random.default_rng(seed)
    a_, b_ = np.array(a, dtype=float), np.array(b, dtype=float)
    ra = np.median(rng.choice(a_, size=(reps, len(a_))), axis=1)
    rb = np.median(rng.choice(b_, size=(reps, len(b_))), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(np.isinf(ra) & np.isinf(rb), np.nan, ra / rb)
    ratios = ratios[~np.isnan(ratios)]
    if not len(ratios):
        return math.nan, math.nan
    return (float(np.quantile(ratios, 0.025, method="lower")),
            float(np.quantile(ratios, 0.975, method="higher")))


def summarise(runs: list[dict], names: list[str], tgts: dict[float, float],
              budget: int, base: Callable[[str], str] = lambda name: "random") -> list[dict]:
    """Per method and target: median costs, ratios to the method `base(name)` (random
    search) with intervals, ERT, hits."""
    rows = []
    by = {n: [r for r in runs if r["method"] == n] for n in names}
    for q, target in tgts.items():
        done: dict[str, dict] = {}
        for n in names:
            costs = [cost(r["curve"], target) for r in by[n]]
            spent = [(r["curve"][-1][0], r["curve"][-1][1]) if r["curve"] else (budget, 0.0)
                     for r in by[n]]
            ep = [c[0] if c else math.inf for c in costs]
            sec = [c[1] if c else math.inf for c in costs]
            row = done[n] = {
                "method": n, "quantile": q, "target": target, "runs": len(costs),
                "reached": sum(c is not None for c in costs),
                "median_epochs": median_inf(ep), "median_s": median_inf(sec),
                "ert_epochs": R.ert([c[0] if c else None for c in costs], [s[0] for s in spent]),
                "ert_s": R.ert([c[1] if c else None for c in costs], [s[1] for s in spent]),
                "_ep": ep, "_sec": sec,
            }
            ref = done.get(base(n))
            if ref is not None:
                for key, raw in (("epochs", "_ep"), ("s", "_sec")):
                    with np.errstate(invalid="ignore", divide="ignore"):
                        row[f"ratio_{key}"] = float(np.float64(row[f"median_{key}"])
                                                    / ref[f"median_{key}"])
                        row[f"ert_ratio_{key}"] = float(np.float64(row[f"ert_{key}"])
                                                        / ref[f"ert_{key}"])
                    row[f"ci_{key}"] = bootstrap_ratio(row[raw], ref[raw])
            rows.append(row)
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def ranking(t: R.Table) -> dict[str, Any]:
    """How early epochs rank configurations, and the oracle bounds of pruning.

    Rank correlation of val_acc at epoch e with the final val_acc (rows that ran to the end).
    Oracle: random search that knows after `grace` epochs whether a configuration will ever
    reach the target, and stops it then if not. Its ERT against random search's is the most
    any pruning rule can save on this table (per target), whatever its rungs.
    """
    full = [c for c in t.val_acc if len(c) == t.epochs]
    acc = np.array(full)
    final = acc[:, -1]
    rho = {e: spearman(acc[:, e - 1], final) for e in (1, 2, 3, 5, 9) if e <= t.epochs}
    tops = {e: spearman(acc[final >= np.quantile(final, 0.5), e - 1],
                        final[final >= np.quantile(final, 0.5)]) for e in rho}
    bounds = {}
    for q, target in R.targets(t, QUANTILES).items():
        hits = [next((i + 1 for i, v in enumerate(c) if v >= target), None) for c in t.val_acc]
        p = sum(h is not None for h in hits) / len(hits)
        first = float(np.mean([h for h in hits if h is not None]))
        lengths = float(np.mean([len(c) for c in t.val_acc]))
        random_ert = (1 / p - 1) * lengths + first  # geometric number of misses, each full
        oracle = {g: ((1 / p - 1) * g + first) / random_ert for g in (1, 2)}
        bounds[q] = {"target": target, "p_hit": p, "mean_hit_epoch": first,
                     "random_ert_epochs": random_ert,
                     "oracle_ratio_grace1": oracle[1], "oracle_ratio_grace2": oracle[2]}
    return {"spearman_with_final": rho, "spearman_top_half": tops, "oracle": bounds}


def plot(task: str, runs: list[dict], names: list[str], tgts: dict[float, float],
         path: Path) -> None:
    """Median best-so-far (interquartile band) against trial-epochs and against seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for col, (ax, label) in enumerate(zip(axes, ("trial-epochs", "seconds (simulated)"),
                                          strict=True)):
        horizon = max((r["curve"][-1][col] for r in runs if r["curve"]), default=1)
        left = 1.0 if col == 0 else 0.5
        grid = np.geomspace(left, max(horizon, left * 2), 300)
        for n in names:
            curves_ = []
            for r in (r for r in runs if r["method"] == n):
                xs = np.array([p[col] for p in r["curve"]])
                ys = np.array([p[2] for p in r["curve"]])
                idx = np.searchsorted(xs, grid, side="right") - 1
                curves_.append(np.where(idx >= 0, ys[np.clip(idx, 0, None)], np.nan))
            c = np.array(curves_)
            with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore")
                med = np.nanmedian(c, axis=0)
                lo, hi = np.nanquantile(c, 0.25, axis=0), np.nanquantile(c, 0.75, axis=0)
            ax.plot(grid, med, label=n)
            ax.fill_between(grid, lo, hi, alpha=0.12)
        for q, target in tgts.items():
            ax.axhline(target, color="grey", lw=0.6, ls=":")
            ax.text(horizon, target, f" q{int(q * 100)}", va="center", fontsize=7)
        low = min(tgts.values()) - 0.03
        ax.set_ylim(low, max(tgts.values()) + 0.005)
        ax.set_xscale("log")
        ax.set_xlim(left, grid[-1])
        ax.set_xlabel(label)
        ax.set_ylabel("best val_acc so far (median over seeds)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"bench.search replay on the {task} table")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def replay_task(task: str, ms: list[R.Method], args: argparse.Namespace) -> dict[str, Any]:
    """Every method x seed against one table, in `--jobs` processes."""
    path = curves.table_path(task)
    raw = curves.load(path)
    t = R.table(raw)
    tgts = R.targets(t, QUANTILES)
    jobs = [(m, seed, args.concurrent, args.budget, max(tgts.values()))
            for m in ms for seed in range(args.seeds)]
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.jobs, _load, (str(path),)) as pool:
        runs = pool.map(_one, jobs, chunksize=1)
    names = [m.name for m in ms]
    return {"task": task, "rows_in_table": len(t.val_acc), "epochs": t.epochs,
            "val_images": raw.get("val_images"), "table_wall_s": raw.get("wall_s"),
            "trial_overhead_s": t.trial_overhead_s, "epoch_overhead_s": t.epoch_overhead_s,
            "median_epoch_s": float(np.median([s for r in t.epoch_s for s in r])),
            "targets": tgts, "replay_s": time.perf_counter() - start,
            "summary": summarise(runs, names, tgts, args.budget), "ranking": ranking(t),
            "trials_per_run": {n: statistics.median(r["trials"] for r in runs
                                                    if r["method"] == n) for n in names},
            "_runs": runs, "_names": names}


def fmt_ratio(r: dict, key: str) -> str:
    lo, hi = r[f"ci_{key}"]
    return f"{r[f'ratio_{key}']:.2f} [{lo:.2f}, {hi:.2f}]"


def print_task(res: dict) -> None:
    print(f"\n== {res['task']}: {res['rows_in_table']} configurations x {res['epochs']} epochs; "
          f"median epoch {res['median_epoch_s']:.3f} s, per-trial overhead "
          f"{res['trial_overhead_s']:.3f} s, per-epoch overhead {res['epoch_overhead_s']:.3f} s; "
          f"replayed in {res['replay_s']:.0f} s")
    print(f"{'method':26s} {'q':>4s} {'target':>7s} {'hit':>6s} {'med ep':>7s} "
          f"{'ratio ep [95% CI]':>20s} {'ERT ep':>7s} {'med s':>7s} {'ratio s [95% CI]':>20s}"
          f" {'ERT s':>7s}")
    for r in res["summary"]:
        print(f"{r['method']:26s} {r['quantile']:4.2f} {r['target']:7.4f} "
              f"{r['reached']:3d}/{r['runs']:<2d} {r['median_epochs']:7.0f} "
              f"{fmt_ratio(r, 'epochs'):>20s} {r['ert_epochs']:7.0f} {r['median_s']:7.1f} "
              f"{fmt_ratio(r, 's'):>20s} {r['ert_s']:7.1f}")
    rk = res["ranking"]
    print("Spearman(val_acc at epoch e, final): " + "  ".join(
        f"e{e}: {v:.2f}" for e, v in rk["spearman_with_final"].items())
        + "   top half only: " + "  ".join(
        f"e{e}: {v:.2f}" for e, v in rk["spearman_top_half"].items()))
    for q, b in rk["oracle"].items():
        print(f"q{q:.2f} target {b['target']:.4f}: {100 * b['p_hit']:.1f}% of configurations "
              f"ever reach it, at epoch {b['mean_hit_epoch']:.1f} on average; an oracle "
              f"pruner saves at best {b['oracle_ratio_grace1']:.2f}x (grace 1) / "
              f"{b['oracle_ratio_grace2']:.2f}x (grace 2) of random search's ERT")


#: Live strategies: overrides of the config's defaults (random sampling, ASHA).
STRATEGIES = {
    "default": [],
    "random": ["search.sampler=random", "scheduler.name=fifo"],
    "pbt": ["scheduler.name=pbt"],
    "pb2": ["scheduler.name=pb2"],
}


def live(args: argparse.Namespace) -> dict[str, Any]:
    """Live searches through `search.run`, per table (digits, digits28) and seed: each
    strategy's cost to each target and its best val_acc within the same trial-epochs (PBT's
    whole population: `--population` members times the table's epochs)."""
    from mlflow.tracking import MlflowClient

    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    strategies = {k: STRATEGIES[k] for k in args.strategies}
    report = {}
    for task in args.tasks or ["digits"]:
        if task not in ("digits", "digits28"):
            raise SystemExit(f"--live: --tasks digits or digits28, not {task}")
        if task == "digits28" and not curves.PNG.is_dir():
            import subprocess
            import sys

            subprocess.run([sys.executable, str(curves.ROOT / "conf/own_model/"
                                                "make_image_folder.py"), str(curves.PNG)],
                           check=True)
        t = R.table(curves.load(curves.table_path(task)))
        tgts = R.targets(t, QUANTILES)
        budget = args.population * t.epochs
        rows = []
        for seed in range(args.seeds):
            for label, sets in strategies.items():
                name = f"{task}-{label}-{seed}"
                samples = args.population if label in ("pbt", "pb2") else args.samples
                start = time.monotonic()
                run(name, seed, samples, work, [*curves.TASKS[task][1], *sets, *args.sets])
                wall = time.monotonic() - start
                points = val_points(client, name)
                rows.append({"strategy": label, "seed": seed, "wall_s": wall,
                             "trial_epochs": len(points),
                             "best_at_budget": max((v for _, v in points[:budget]),
                                                   default=float("nan")),
                             **{str(q): cost_to_target(client, name, target)
                                for q, target in tgts.items()}})
                print(f"{name}: {len(points)} trial-epochs in {wall:.0f} s, best within "
                      f"{budget}: {rows[-1]['best_at_budget']:.4f}", flush=True)
        print_live(task, tgts, budget, strategies, rows)
        report[task] = {"targets": tgts, "budget": budget, "rows": rows}
    return {"samples": args.samples, "population": args.population, "tasks": report}


def print_live(task: str, tgts: dict[float, float], budget: int, strategies: dict,
               rows: list[dict]) -> None:
    """Per strategy: the median best val_acc within `budget` trial-epochs, and per target
    the median trial-epochs and seconds to reach it (over the seeds that did) and how many
    seeds reached it within the budget."""
    print(f"\nlive: {task}, budget {budget} trial-epochs, {len(rows) // len(strategies)} "
          "seeds; cost = trial-epochs / training seconds to target (* never)")
    for label in strategies:
        mine = [r for r in rows if r["strategy"] == label]
        best = statistics.median(r["best_at_budget"] for r in mine)
        line = f"{label:8s} best@budget median {best:.4f}"
        for q, target in tgts.items():
            cells = [r[str(q)] for r in mine]
            hit = [c for c in cells if c["reached"] and c["epochs"] <= budget]
            med = (f"{statistics.median(c['epochs'] for c in hit):.0f} ep / "
                   f"{statistics.median(c['training_seconds'] for c in hit):.0f} s"
                   if hit else "-")
            line += f" | q{q:.2f} {target:.4f}: {len(hit)}/{len(cells)} hit, {med}"
        print(line)
        print("         per seed: " + "  ".join(
            f"{r['best_at_budget']:.4f}/{r[str(0.97)]['epochs']}"
            f"{'' if r[str(0.97)]['reached'] else '*'}" for r in mine))


def val_points(client, experiment: str) -> list[tuple[int, float]]:
    """Every val_acc a child run reported, in the order they were logged."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    return sorted((m.timestamp, m.value)
                  for r in runs if r.data.tags.get("mlflow.parentRunId")
                  for m in client.get_metric_history(r.info.run_id, "val_acc"))


def cost_to_target(client, experiment: str, target: float) -> dict:
    """Trial-epochs and seconds until some trial first reports val_acc >= target (MLflow)."""
    exp = client.get_experiment_by_name(experiment)
    parent = next(r for r in client.search_runs([exp.experiment_id], max_results=5000)
                  if r.data.tags.get("role") == "search")
    points = val_points(client, experiment)
    first = points[0][0] if points else parent.info.start_time
    for i, (ts, value) in enumerate(points, start=1):
        if value >= target:
            return {"epochs": i, "seconds": (ts - parent.info.start_time) / 1000,
                    "training_seconds": (ts - first) / 1000, "reached": True}
    last = points[-1][0] if points else first
    return {"epochs": len(points), "seconds": (last - parent.info.start_time) / 1000,
            "training_seconds": (last - first) / 1000, "reached": False}


def run(name: str, seed: int, samples: int, work: Path, sets: list[str]) -> None:
    """One live search of conf/digits.yaml through `search.run`."""
    from search.cli import run_main
    from search.run import main as search_main

    argv = [str(CONF), "--name", name, "--storage-path", str(work / "runs"),
            "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--num-samples", str(samples),
            "--set", f"search.seed={seed}", "--set", "mlflow.register_as=null",
            "--set", "search.points_to_evaluate=[]",
            *(arg for item in sets for arg in ("--set", item))]
    try:
        run_main(lambda: search_main(argv))
    except SystemExit as e:
        if e.code not in (0, None):
            raise


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="*", help="tables in bench/curves/ (default: all)")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--grace", type=int, default=1, help="ASHA's grace period (epochs)")
    p.add_argument("--rf", type=float, default=4, help="ASHA's reduction factor")
    p.add_argument("--startup", type=int, default=4, help="TPE's and GP's random start")
    p.add_argument("--sweep", action="store_true", help="TPE+ASHA over grace, rf, start-up")
    p.add_argument("--methods", nargs="*", help="only these methods (default: all)")
    p.add_argument("--concurrent", type=int, default=2, help="trials at a time")
    p.add_argument("--budget", type=int, default=3000, help="trial-epochs per run at most")
    p.add_argument("--jobs", type=int, default=2, help="processes replaying")
    p.add_argument("--live", action="store_true",
                   help="live searches instead (--tasks digits digits28, --strategies)")
    p.add_argument("--strategies", nargs="*", default=["default", "random"],
                   choices=list(STRATEGIES), help="--live: what is compared")
    p.add_argument("--population", type=int, default=8,
                   help="--live: PBT's members; the budget is members x epochs")
    p.add_argument("--warm", action="store_true",
                   help="warm start replayed instead (bench/warm.py); --budget 1500 then")
    p.add_argument("--scenarios", nargs="*", help="--warm: these only (default: all)")
    p.add_argument("--source-trials", type=int, default=32,
                   help="--warm: trials of the earlier search, drawn per seed")
    p.add_argument("--top", type=int, default=2, help="--warm: its best configurations run "
                                                     "first (search.warm_start_top)")
    p.add_argument("--samples", type=int, default=40,
                   help="--live: trials of a search other than PBT's")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="--live: a config override for both strategies (repeatable)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    report: dict[str, Any] = {"machine": machine, "date": time.strftime("%Y-%m-%d"),
                              "args": {k: str(v) for k, v in vars(args).items()}}
    if args.live:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        report["live"] = live(args)
    elif args.warm:
        from bench import warm

        report["warm"] = {}
        for scenario in args.scenarios or list(warm.SCENARIOS):
            res = warm.run(scenario, args.seeds, min(args.budget, 1500), args.source_trials,
                           args.top, args.jobs)
            warm.print_scenario(res)
            report["warm"][scenario] = res
    else:
        tasks = args.tasks or sorted(f.name.removesuffix(".json.gz")
                                     for f in curves.FOLDER.glob("*.json.gz"))
        ms = sweep(args.startup) if args.sweep else methods(args.grace, args.rf, args.startup)
        ms = [m for m in ms if not args.methods or m.name in args.methods]
        report["tasks"] = {}
        for task in tasks:
            res = replay_task(task, ms, args)
            print_task(res)
            if not args.sweep:
                png = Path(__file__).with_name(f"search-{task}.png")
                plot(task, res["_runs"], res["_names"], res["targets"], png)
                print(f"wrote {png}")
            report["tasks"][task] = {k: v for k, v in res.items() if not k.startswith("_")}
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
