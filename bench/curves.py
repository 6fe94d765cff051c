"""Learning-curve tables from real training, for replaying searches (bench/replay.py).

    python -m bench.curves digits --samples 400          # -> bench/curves/digits.json.gz
    python -m bench.curves digits28 --samples 200        # -> bench/curves/digits28.json.gz
    python -m bench.curves regression --samples 400      # -> bench/curves/regression.json.gz
    python -m bench.curves charlm --samples 200          # -> bench/curves/charlm.json.gz
    python -m bench.curves digits-lr --samples 64        # bench/space_compare.py's two
    python -m bench.curves digits-joint --samples 288

Each table is built with the project's own search (`search.run.run_search`): random sampler,
FIFO scheduler (every trial trains the full budget), no `points_to_evaluate`, nothing
registered, `--samples` trials, `--concurrent` at a time. Every trial's per-epoch metrics are
read back from Ray's `result.json` in the trial's folder. So the table is also a stress test
of the search: hundreds of trials through Ray Tune, Optuna and the MLflow writer.

Tasks (all real images; nothing can be downloaded on the machine this was built on):
- `digits`: conf/digits.yaml as is, scikit-learn's 8x8 digits, the small CNN, 15 epochs.
- `digits28`: the same 1,797 digits written as PNG files (conf/own_model/make_image_folder.py)
  and read through the `imagefolder` code path resized to 28x28 (MNIST's shape), with the
  MLP instead of the CNN, 15 epochs: another model and input size on the same images.
- `digits-lr`: digits with Adam's other keys fixed (beta1 0.9, beta2 0.999, eps 1e-8), the
  learning rate alone searched (log [1e-4, 1e-1]) under a constant schedule, batch size 128.
- `digits-joint`: the same, with the learning rate searched jointly with `train.schedule`
  (constant, cosine, onecycle), `train.warmup_fraction` ([0.05, 0.3], onecycle only) and
  `train.batch_size` (32, 64, 128). bench/space_compare.py compares the two.
- `regression`: conf/regression/search.yaml, a training task of the user's (scikit-learn's
  diabetes data, an MLP, 30 epochs), its space (lr, the width) with Adam's other keys
  searched too; metric val_rmse, lower is better: a continuous metric.
- `charlm`: conf/charlm/search.yaml, a character-level causal CNN on the repository's text,
  6 epochs, its space (lr, beta1) with one_minus_beta2 and eps searched too; metric
  val_bits_per_char, lower is better.

A table row: the sample (searched names as Optuna names them; a categorical value as it
is, a number as a float, a conditional key that was not sampled left out), the trainer seed,
per epoch the table's metric (`metric`, `mode`: val_acc and max for the image tables),
val_loss where the task reports it, and epoch_s, and `startup_s`: the trial's first
iteration as Tune timed it minus its first epoch, i.e. what a trial costs before it trains
(sample, process hand-over, model and optimizer set-up). The tables are committed
(bench/curves/, gzipped JSON), so that `python -m bench.search` reproduces the published
figures from a fresh clone; rebuild them with the commands above (5 to 15 minutes each on
2 cores). `--set KEY=VALUE` adds a config override (fewer epochs, say); the table records
every override.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FOLDER = Path(__file__).with_name("curves")
PNG = ROOT / "data" / "digits-png"
ADAM_FIXED = ["space.beta1.value=0.9", "space.one_minus_beta2.value=1.0e-3",
              "space.eps.value=1.0e-8"]  # Adam's defaults; weight_decay is fixed at 0 already
TASKS: dict[str, tuple[str, list[str]]] = {
    "digits": ("conf/digits.yaml", []),
    "digits28": ("conf/digits.yaml", [
        "data.dataset=imagefolder", f"data.root={PNG}", "data.image_size=28",
        "data.channels=1", "model.name=mlp"]),
    "digits-lr": ("conf/digits.yaml", [
        *ADAM_FIXED, "train.schedule=constant", "train.batch_size=128"]),
    "digits-joint": ("conf/digits.yaml", [
        *ADAM_FIXED,
        "space.train.schedule={choices: [constant, cosine, onecycle]}",
        "space.train.warmup_fraction={low: 0.05, high: 0.3, when: {train.schedule: onecycle}}",
        "space.train.batch_size={choices: [32, 64, 128]}"]),
    "regression": ("conf/regression/search.yaml", []),
    "charlm": ("conf/charlm/search.yaml", []),
}


def table_path(task: str) -> Path:
    """Where the table of `task` lives."""
    return FOLDER / f"{task}.json.gz"


def overrides(task: str, samples: int, concurrent: int, seed: int,
              extra: list[str] = ()) -> list[str]:
    """The search that measures every configuration to the full budget: random, FIFO."""
    return [*TASKS[task][1], *extra, f"search.num_samples={samples}",
            f"search.max_concurrent={concurrent}", f"search.seed={seed}",
            "search.sampler=random", "scheduler.name=fifo", "search.points_to_evaluate=[]",
            "mlflow.register_as=null"]


def param(value: Any) -> Any:
    """A sampled value as a table keeps it: a number as a float, a category as it is."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if numeric else value


def read_trial(folder: Path, names: list[str], metric: str = "val_acc") -> dict[str, Any] | None:
    """One trial's row from Ray's result.json (one JSON line per epoch); None if empty.
    A conditional name the trial did not sample is left out of its params."""
    path = folder / "result.json"
    if not path.is_file():
        return None
    results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    results = sorted({r["epoch"]: r for r in results}.values(), key=lambda r: r["epoch"])
    if not results:
        return None
    config = results[0]["config"]
    first = results[0]
    return {
        "trial_id": first["trial_id"],
        "params": {n: param(config[n]) for n in names if n in config},
        metric: [float(r[metric]) for r in results],
        **({"val_loss": [float(r["val_loss"]) for r in results]}
           if "val_loss" in first else {}),
        "epoch_s": [float(r["epoch_s"]) for r in results],
        "startup_s": max(0.0, float(first["time_this_iter_s"]) - float(first["epoch_s"])),
        "diverged": bool(results[-1].get("diverged", False)),
        "start_ts": float(first["timestamp"]) - float(first["time_this_iter_s"]),
        "end_ts": float(results[-1]["timestamp"]),
        # Tune's clock of the whole trial: its epochs, its reporting and checkpoints.
        "time_total_s": float(results[-1]["time_total_s"]),
    }


def collect(experiment: Path, names: list[str], metric: str = "val_acc") -> list[dict[str, Any]]:
    """Every trial's row of a finished search, in the order the trials started."""
    rows = [r for d in sorted(experiment.glob("trial_*"))
            if (r := read_trial(d, names, metric))]
    return sorted(rows, key=lambda r: r["start_ts"])


def build(task: str, samples: int, concurrent: int, seed: int, out: Path,
          extra: list[str] = ()) -> dict[str, Any]:
    """Run the search of `task` (with the `extra` overrides) and write its table to `out`."""
    from search import config as config_
    from search.run import run_search
    from search.space import searched

    if task == "digits28" and not PNG.is_dir():
        subprocess.run([sys.executable, str(ROOT / "conf/own_model/make_image_folder.py"),
                        str(PNG)], check=True)
    conf, _ = TASKS[task]
    sets = overrides(task, samples, concurrent, seed, list(extra))
    cfg = config_.load(ROOT / conf, sets)
    work = Path(tempfile.mkdtemp(prefix=f"curves-{task}-"))
    start = time.time()
    result = run_search(str(ROOT / conf), sets, name=f"curves-{task}",
                        storage_path=str(work / "runs"),
                        tracking_uri=f"sqlite:///{work / 'mlflow.db'}", show_progress=True)
    wall = time.time() - start
    names = searched(cfg.space)
    rows = collect(Path(result.path), names, cfg.search.metric)
    table = {
        "task": task, "config": conf, "overrides": sets, "epochs": cfg.train.epochs,
        "seed": cfg.train.seed, "search_seed": seed, "names": names,
        "space": cfg.space.model_dump(mode="json"),
        "metric": cfg.search.metric, "mode": cfg.search.mode,
        "val_images": _val_images(cfg) if cfg.train.task is None else None,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "concurrent": concurrent, "wall_s": wall, "built": time.strftime("%Y-%m-%d"),
        "trials": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt") as f:
        json.dump(table, f)
    return table


def _val_images(cfg) -> int:
    from search.trial import data

    return len(data.load(cfg.data).val)


def load(path: Path | str) -> dict[str, Any]:
    """A table written by `build` (or by hand, for tests: the same keys)."""
    with gzip.open(path, "rt") as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--out", type=Path)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override besides the task's (repeatable)")
    args = p.parse_args(argv)
    out = args.out or table_path(args.task)
    table = build(args.task, args.samples, args.concurrent, args.seed, out, args.sets)
    rows, metric = table["trials"], table["metric"]
    finals = sorted(r[metric][-1] for r in rows)
    best = finals[-1] if table["mode"] == "max" else finals[0]
    print(f"wrote {out}: {len(rows)} trials x {table['epochs']} epochs in "
          f"{table['wall_s']:.0f} s; final {metric} median {finals[len(finals) // 2]:.4f}, "
          f"best {best:.4f}")
    os._exit(0)  # as search.run does: Ray's teardown is slow and not needed


if __name__ == "__main__":
    main()
