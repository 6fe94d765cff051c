"""The learning rate alone against the learning rate with schedule, warm-up and batch size.

    python -m bench.space_compare --build       # both tables (bench.curves), then the replays
    python -m bench.space_compare               # the replays, over the tables already built
    python -m bench.space_compare --seeds 100 --trials 24

Two spaces on digits (conf/digits.yaml: the small CNN, 15 epochs), Adam's other keys fixed at
its defaults (beta1 0.9, beta2 0.999, eps 1e-8, no weight decay), lr log-uniform [1e-4, 1e-1]
in both (bench/curves.py, TASKS):
- `digits-lr`: lr alone, constant schedule, batch size 128 (the schema's defaults);
- `digits-joint`: lr x train.schedule {constant, cosine, onecycle} x train.warmup_fraction
  [0.05, 0.3] (onecycle only) x train.batch_size {32, 64, 128}.
Each has its table, built by a real search (random sampler, FIFO: every row trains all
epochs; `--build` runs `python -m bench.curves TASK --samples N`). A third arm,
`lr@joint-rows`, searches the lr-only space over the joint table's constant-schedule,
batch-128 rows: the lr-only space again, with other learning rates drawn (each row's curve
is one training run, and neighbouring learning rates end a few images apart), so that the
two lr-only arms show how much of a difference the tables alone make. Then per arm, sampler
(random; TPE after its 4 random start-up trials) and seed, a replay (bench/replay.py: the
live search's Optuna sampler and OptunaSearch over the space's DefineByRun, nearest row of
the same categories) of `--trials` trials, FIFO, 2 at a time.

Per run: the best val_acc at the budget, as the search itself ranks trials (the best last-
epoch val_acc of a trial that trained every epoch; diverged ones rank last), and the
trial-epochs spent until a trial first completed with val_acc >= a target (inf: not within
the budget). Targets, both from `digits-lr`: `lr median` is the median over seeds of its
random search's best at the budget; `lr table` is the best final val_acc in its table (the
most any learning rate in it reached under the fixed schedule). Printed: medians over seeds
with 95% bootstrap intervals (seeds resampled); each arm's difference of median best and
ratio of median cost to `digits-lr`'s (same sampler), with bench.search.bootstrap_ratio's
interval (n/a where either median is inf); the runs that reached each target and the ERT
(all trial-epochs spent over the runs that reached it); the median of the best val_acc any
epoch reported (`peak`, bench.search's best-so-far). Also each (schedule, batch size) cell
of each table: rows, median, mean of the top 5 and best final val_acc. Writes
bench/space_compare.json.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import curves
from bench import replay as R
from bench.search import bootstrap_ratio

SPACES = ("digits-lr", "digits-joint")
LR_OF_JOINT = "lr@joint-rows"  # the lr-only space over the joint table's constant/128 rows
ARMS = ("digits-lr", LR_OF_JOINT, "digits-joint")
OUT = Path(__file__).with_name("space_compare.json")


def build(rows: dict[str, int]) -> None:
    """Each space's table from a real search, one process each (Ray's teardown is skipped)."""
    for task, n in rows.items():
        subprocess.run([sys.executable, "-m", "bench.curves", task, "--samples", str(n)],
                       check=True, cwd=curves.ROOT)


def run_once(t: R.Table, m: R.Method, seed: int, trials: int) -> dict[str, Any]:
    """One replayed search of `trials` trials: when each trial completed (trial-epochs spent
    by then) and with what final val_acc; diverged trials, which the search ranks last,
    left out. Also the best val_acc any epoch reported (bench.search's best-so-far)."""
    trace = R.replay(t, m, seed, concurrent=2, max_trials=trials, budget_epochs=10**9)
    done = [(epochs, value) for index, epoch, value, epochs, _ in trace.results
            if epoch == t.epochs and len(t.val_acc[trace.trials[index].row]) == t.epochs]
    return {"seed": seed, "best": max((v for _, v in done), default=-math.inf),
            "peak": max(r[2] for r in trace.results), "spent": trace.spent()[0],
            "completed": done,
            "trials": [{"params": tr.params, "row": tr.row, "epochs": tr.epochs}
                       for tr in trace.trials]}


def cost(run: dict[str, Any], target: float) -> float:
    """Trial-epochs until a trial first completed with val_acc >= `target`; inf: never."""
    return next((float(e) for e, v in run["completed"] if v >= target), math.inf)


def median_ci(values: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median and its 95% bootstrap interval (seeds resampled)."""
    rng = np.random.default_rng(seed)
    v = np.array(values, dtype=float)
    meds = np.median(rng.choice(v, size=(reps, len(v))), axis=1)
    return (float(np.median(v)), float(np.quantile(meds, 0.025, method="lower")),
            float(np.quantile(meds, 0.975, method="higher")))


def diff_ci(a: list[float], b: list[float], reps: int = 2000,
            seed: int = 0) -> tuple[float, float, float]:
    """median(a) - median(b) and its 95% bootstrap interval, each resampled on its own."""
    rng = np.random.default_rng(seed)
    a_, b_ = np.array(a, dtype=float), np.array(b, dtype=float)
    d = (np.median(rng.choice(a_, size=(reps, len(a_))), axis=1)
         - np.median(rng.choice(b_, size=(reps, len(b_))), axis=1))
    return (float(np.median(a_) - np.median(b_)), float(np.quantile(d, 0.025, method="lower")),
            float(np.quantile(d, 0.975, method="higher")))


def mismatched(row: dict[str, Any], sample: dict[str, Any]) -> bool:
    """Whether a table row and a sample differ in a category (or a key's presence)."""
    keys = ("train.schedule", "train.batch_size", "train.warmup_fraction")
    return (any((k in row) != (k in sample) for k in keys)
            or any(not R.same_value(row[k], sample[k]) for k in keys[:2] if k in row))


def cells(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (schedule, batch size) of a table: rows, median, mean of the top 5 and best
    final val_acc."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in raw["trials"]:
        p = r["params"]
        key = (p.get("train.schedule", "constant"), int(p.get("train.batch_size", 128)))
        groups.setdefault(key, []).append(r["val_acc"][-1])
    return [{"schedule": s, "batch_size": b, "rows": len(v), "median": float(np.median(v)),
             "top5_mean": float(np.mean(sorted(v)[-5:])), "best": max(v)}
            for (s, b), v in sorted(groups.items())]


def lr_rows_of_joint(lr_raw: dict[str, Any], joint_raw: dict[str, Any]) -> dict[str, Any]:
    """The lr-only space's table made of the joint table's constant-schedule, batch-128
    rows: the same configurations as the lr-only table, other learning rates drawn."""
    rows = [r | {"params": {"lr": r["params"]["lr"]}} for r in joint_raw["trials"]
            if r["params"]["train.schedule"] == "constant"
            and r["params"]["train.batch_size"] == 128]
    return lr_raw | {"trials": rows, "concurrent": joint_raw["concurrent"],
                     "wall_s": None, "built": joint_raw.get("built")}


def compare(seeds: int, trials: int) -> dict[str, Any]:
    raws = {s: curves.load(curves.table_path(s)) for s in SPACES}
    raws[LR_OF_JOINT] = lr_rows_of_joint(raws["digits-lr"], raws["digits-joint"])
    tables = {s: R.table(raw) for s, raw in raws.items()}
    methods = [R.method("random", "random"), R.method("tpe", "tpe", n_startup_trials=4)]
    runs: dict[tuple[str, str], list[dict]] = {}
    start = time.perf_counter()
    for space in ARMS:
        for m in methods:
            runs[space, m.name] = [run_once(tables[space], m, seed, trials)
                                   for seed in range(seeds)]
    replay_s = time.perf_counter() - start
    lr_raw = raws["digits-lr"]
    tgts = {"lr median": float(np.median([r["best"] for r in runs["digits-lr", "random"]])),
            "lr table": max(r["val_acc"][-1] for r in lr_raw["trials"]
                            if len(r["val_acc"]) == lr_raw["epochs"])}
    rows = []
    for m in methods:
        base = runs["digits-lr", m.name]
        for space in ARMS:
            rs = runs[space, m.name]
            best = [r["best"] for r in rs]
            row: dict[str, Any] = {"space": space, "sampler": m.name, "runs": len(rs),
                                   "best": median_ci(best),
                                   "best_minus_lr": diff_ci(best, [r["best"] for r in base]),
                                   "peak": median_ci([r["peak"] for r in rs]),
                                   "spent_epochs": float(np.median([r["spent"] for r in rs]))}
            for name, target in tgts.items():
                c = [cost(r, target) for r in rs]
                cb = [cost(r, target) for r in base]
                med, medb = float(np.median(c)), float(np.median(cb))
                ratio = med / medb if math.isfinite(med) and math.isfinite(medb) else math.nan
                row[name] = {
                    "target": target, "reached": sum(math.isfinite(x) for x in c),
                    "median_epochs": med, "ratio_to_lr": ratio,
                    "ci": bootstrap_ratio(c, cb),
                    "ert_epochs": R.ert([x if math.isfinite(x) else None for x in c],
                                        [r["spent"] for r in rs])}
            rows.append(row)
    joint_trials = [tr for m in methods for r in runs["digits-joint", m.name]
                    for tr in r["trials"]]
    table_cells = {s: cells(raw) for s, raw in raws.items()}
    return {
        "date": time.strftime("%Y-%m-%d"), "seeds": seeds, "trials": trials,
        "replay_s": replay_s, "targets": tgts, "rows": rows, "cells": table_cells,
        "tables": {s: {"rows": len(raw["trials"]), "epochs": raw["epochs"],
                       "wall_s": raw.get("wall_s"), "built": raw.get("built"),
                       "machine": raw.get("machine"), "overrides": raw.get("overrides"),
                       "val_images": raw.get("val_images")} for s, raw in raws.items()},
        # replayed trials of the joint space given a row of other categories (0 expected)
        "joint_category_mismatches": sum(
            mismatched(raws["digits-joint"]["trials"][tr["row"]]["params"], tr["params"])
            for tr in joint_trials),
        "runs": {f"{s}/{m}": [{k: v for k, v in r.items() if k != "curve"} for r in rs]
                 for (s, m), rs in runs.items()},
    }


def fmt_ci(v: tuple[float, float, float], digits: int = 4) -> str:
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"


def report(res: dict[str, Any]) -> None:
    for s, info in res["tables"].items():
        built = f" in {info['wall_s']:.0f} s" if info["wall_s"] else " (rows of digits-joint)"
        print(f"{s}: {info['rows']} rows x {info['epochs']} epochs, built {info['built']}"
              f"{built} ({info['machine']}); {info['val_images']} val images")
    print(f"\n{res['seeds']} seeds x {res['trials']} trials a search, FIFO, 2 at a time; "
          f"replayed in {res['replay_s']:.0f} s; joint trials given a row of other categories: "
          f"{res['joint_category_mismatches']}")
    tg = res["targets"]
    print(f"targets: lr median {tg['lr median']:.4f} (lr-only random search's median best), "
          f"lr table {tg['lr table']:.4f} (the lr-only table's best)")
    print(f"{'space':14s} {'sampler':7s} {'best val_acc [95% CI]':>26s} "
          f"{'minus lr-only [95% CI]':>27s} {'peak':>6s} "
          + "  ".join(f"{'to ' + n + ': hit, med ep, ratio [CI], ERT':>44s}" for n in tg))
    for r in res["rows"]:
        cells_ = []
        for n in tg:
            c = r[n]
            ratio = (f"{c['ratio_to_lr']:5.2f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]"
                     if math.isfinite(c["ratio_to_lr"]) else "n/a")
            cells_.append(f"{c['reached']:3d}/{r['runs']:<3d} {c['median_epochs']:6.0f} "
                          f"{ratio:>18s} {c['ert_epochs']:6.0f}")
        print(f"{r['space']:14s} {r['sampler']:7s} {fmt_ci(r['best']):>26s} "
              f"{fmt_ci(r['best_minus_lr'], 4):>27s} {r['peak'][0]:.4f} "
              + "  ".join(f"{x:>44s}" for x in cells_))
    for s, cs in res["cells"].items():
        print(f"\n{s} table by (schedule, batch size): rows, final val_acc median, "
              "top-5 mean, best")
        for c in cs:
            print(f"  {c['schedule']:9s} {c['batch_size']:4d} {c['rows']:4d} "
                  f"{c['median']:.4f} {c['top5_mean']:.4f} {c['best']:.4f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.space_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", action="store_true", help="build both tables first")
    p.add_argument("--rows-lr", type=int, default=64, help="--build: rows of digits-lr")
    p.add_argument("--rows-joint", type=int, default=288, help="--build: rows of digits-joint")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--trials", type=int, default=16, help="trials a search (the budget)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.build:
        build({"digits-lr": args.rows_lr, "digits-joint": args.rows_joint})
    import warnings

    warnings.filterwarnings("ignore")
    res = compare(args.seeds, args.trials)
    report(res)
    args.out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
