"""Search efficiency: TPE + ASHA against random search without pruning, on digits.

    python -m bench.search                  # 5 seeds, 20 trials each, target val_acc 0.99
    python -m bench.search --seeds 3 --target 0.98
    python -m bench.search --set 'space.lr={low: 1.0e-5, high: 1.0, log: true}'

For each seed both strategies run the same search (conf/digits.yaml: cnn, 15 epochs, 20
trials, 2 at a time) through `search.run`, on one local Ray, from an empty start: no
`points_to_evaluate`, so neither is handed Adam's textbook defaults, which on digits come
close to the target by themselves. The cost of reaching the target
is read from MLflow, where the driver logs every epoch of every trial as it arrives. The
cost is the trial-epochs trained, over all trials, until the first epoch of any trial with
`val_acc >= target`, and the wall time until then. A strategy that never reaches the
target is charged all its epochs and marked `*`. `--set KEY=VALUE` (repeatable) changes the
config of both strategies, as `search.run --set` does. The table shows each seed and the median
of the per-seed ratios TPE+ASHA / random, of trial-epochs and of wall time, the latter
also counted from each search's first epoch (both pay the same start-up of Ray and the
trial processes once; what differs is what each trial costs). Writes bench/search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from search.cli import run_main
from search.run import main as search_main

OUT = Path(__file__).with_name("search.json")
CONF = Path(__file__).resolve().parent.parent / "conf" / "digits.yaml"
STRATEGIES = {"tpe+asha": ("tpe", "asha"), "random+fifo": ("random", "fifo")}


def cost_to_target(client: MlflowClient, experiment: str, target: float) -> dict:
    """Trial-epochs and seconds until some trial first reports val_acc >= target."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("role") == "search")
    points = sorted(
        (m.timestamp, m.value)
        for r in runs if r.data.tags.get("mlflow.parentRunId")
        for m in client.get_metric_history(r.info.run_id, "val_acc")
    )
    first = points[0][0] if points else parent.info.start_time
    for i, (ts, value) in enumerate(points, start=1):
        if value >= target:
            return {"epochs": i, "seconds": (ts - parent.info.start_time) / 1000,
                    "training_seconds": (ts - first) / 1000, "reached": True}
    last = points[-1][0] if points else first
    return {"epochs": len(points), "seconds": (last - parent.info.start_time) / 1000,
            "training_seconds": (last - first) / 1000, "reached": False}


def run(
    name: str, sampler: str, scheduler: str, seed: int, samples: int, work: Path, sets: list[str]
) -> None:
    argv = [str(CONF), "--name", name, "--storage-path", str(work / "runs"),
            "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--num-samples", str(samples),
            "--set", f"search.seed={seed}", "--set", f"search.sampler={sampler}",
            "--set", f"scheduler.name={scheduler}", "--set", "mlflow.register_as=null",
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
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for both strategies (repeatable)")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    rows = []
    for seed in range(args.seeds):
        row = {"seed": seed}
        for label, (sampler, scheduler) in STRATEGIES.items():
            name = f"{label.replace('+', '-')}-{seed}"
            run(name, sampler, scheduler, seed, args.samples, work, args.sets)
            row[label] = cost_to_target(client, name, args.target)
        row["epoch_ratio"] = row["tpe+asha"]["epochs"] / row["random+fifo"]["epochs"]
        row["time_ratio"] = row["tpe+asha"]["seconds"] / max(row["random+fifo"]["seconds"], 1e-9)
        # The same, from each search's first epoch: without the start-up both pay once.
        row["training_time_ratio"] = (row["tpe+asha"]["training_seconds"]
                                      / max(row["random+fifo"]["training_seconds"], 1e-9))
        rows.append(row)

    def cell(c: dict) -> str:
        return f"{c['epochs']:4d}{'*' if not c['reached'] else ' '} {c['seconds']:6.1f}s"

    print(f"\nbench.search on {machine}: digits, {args.samples} trials a search, "
          f"target val_acc {args.target}; cost = trial-epochs and wall seconds to target")
    if args.sets:
        print("overrides: " + "  ".join(args.sets))
    print(f"{'seed':>4s}  {'TPE+ASHA':>14s}  {'random, no pruning':>18s}  "
          f"{'epoch ratio':>11s}  {'time ratio':>10s}  {'from 1st epoch':>14s}")
    for r in rows:
        print(f"{r['seed']:4d}  {cell(r['tpe+asha']):>14s}  {cell(r['random+fifo']):>18s}  "
              f"{r['epoch_ratio']:11.2f}  {r['time_ratio']:10.2f}  "
              f"{r['training_time_ratio']:14.2f}")
    median_epochs = statistics.median(r["epoch_ratio"] for r in rows)
    median_time = statistics.median(r["time_ratio"] for r in rows)
    median_training = statistics.median(r["training_time_ratio"] for r in rows)
    print(f"median ratio TPE+ASHA / random: trial-epochs {median_epochs:.2f}, "
          f"wall time {median_time:.2f}, wall time from the first epoch {median_training:.2f}"
          "   (* = target never reached: all epochs charged)")
    args.out.write_text(json.dumps({"machine": machine, "target": args.target,
                               "samples": args.samples, "overrides": args.sets, "rows": rows,
                               "median_epoch_ratio": median_epochs,
                               "median_time_ratio": median_time,
                               "median_training_time_ratio": median_training}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
