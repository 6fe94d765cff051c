"""How many trials do hyperparameter importances need? Measured on a learning-curve table.

    python -m bench.importance_min                       # bench/curves/digits-joint.json.gz
    python -m bench.importance_min --table digits-joint --subsets 50

The reference is each evaluator's answer on every row of the table at the last epoch (288
trained configurations of lr x schedule x warm-up x batch size on digits, built by
`python -m bench.curves digits-joint --samples 288`). For each size n, `--subsets` random
subsets of n rows get the search's own importances (search/record/plots.py `importances`,
the three Optuna evaluators) and are compared with the reference: how often the most
important parameter is the reference's, and the Spearman correlation of the shares. The
same is done at earlier epochs (what a search with ASHA has for most trials) against the
last epoch's reference. search/record/plots.py MIN_IMPORTANCE_TRIALS is chosen from this.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import random
import statistics
from pathlib import Path

from bench import curves as curves_

SIZES = (2, 3, 4, 6, 8, 10, 12, 16, 24, 32)
EPOCHS = (1, 2, 4)  # besides the last


def load(table: str) -> tuple[list, dict]:
    """The table's rows as the pictures' TrialCurves (diverged rows left out), and the
    Optuna distributions of its space."""
    from search.config import SpaceConfig
    from search.record import plots
    from search.space import distributions

    path = curves_.FOLDER / f"{table}.json.gz"
    with gzip.open(path, "rt") as f:
        t = json.load(f)
    rows = [plots.TrialCurve(r["trial_id"], "completed", list(range(1, len(r["val_acc"]) + 1)),
                             r["val_acc"], r["params"]) for r in t["trials"] if not r["diverged"]]
    return rows, distributions(SpaceConfig.model_validate(t["space"]))


def at_epoch(rows: list, epoch: int) -> list:
    """Each row as if it had stopped after `epoch` epochs."""
    from search.record import plots

    return [plots.TrialCurve(r.trial_id, r.outcome, r.epochs[:epoch], r.values[:epoch],
                             r.params) for r in rows]


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
    """Rank correlation of two evaluators' shares over the params both rate (nan: < 3)."""
    names = sorted(set(a) & set(b))
    if len(names) < 3:
        return float("nan")

    def ranks(d: dict[str, float]) -> list[float]:
        order = sorted(names, key=lambda n: d[n])
        return [order.index(n) for n in names]

    ra, rb = ranks(a), ranks(b)
    n = len(names)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb, strict=True)) / (n * (n * n - 1))


def compare(found: dict, reference: dict) -> dict[str, tuple[bool, float]]:
    """Per evaluator: (same top parameter as the reference, Spearman of the shares)."""
    out = {}
    for evaluator, ref in reference.items():
        mine = found.get(evaluator)
        if mine:
            out[evaluator] = (max(mine, key=mine.get) == max(ref, key=ref.get),
                              spearman(mine, ref))
    return out


def summary(results: list[dict], evaluator: str) -> tuple[float, float, int]:
    """(share of subsets with the reference's top parameter, median Spearman, subsets)."""
    got = [r[evaluator] for r in results if evaluator in r]
    if not got:
        return float("nan"), float("nan"), 0
    rho = [s for _, s in got if s == s]
    return (sum(top for top, _ in got) / len(got), statistics.median(rho) if rho else float(
        "nan"), len(got))


def main(argv: list[str] | None = None) -> int:
    from search.record import plots

    p = argparse.ArgumentParser(prog="python -m bench.importance_min", description=__doc__)
    p.add_argument("--table", default="digits-joint")
    p.add_argument("--subsets", type=int, default=50)
    p.add_argument("--out", default="bench/importance_min.json")
    args = p.parse_args(argv)
    logging.getLogger("search").setLevel(logging.ERROR)
    rows, dists = load(args.table)
    reference = plots.importances(rows, "val_acc", "max", dists)
    print(f"{args.table}: {len(rows)} rows; reference (all rows, last epoch):")
    for evaluator, shares in reference.items():
        print(f"  {evaluator:24s} " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items()))
    rng = random.Random(0)
    report: dict = {"table": args.table, "rows": len(rows), "reference": reference,
                    "sizes": {}, "epochs": {}}
    print(f"\n{'trials':>6}  " + "  ".join(f"{e[:14]:>14s} top1 rho" for e in reference))
    for n in SIZES:
        results = [compare(plots.importances(rng.sample(rows, n), "val_acc", "max", dists),
                           reference) for _ in range(args.subsets)]
        cells = {e: summary(results, e) for e in reference}
        report["sizes"][n] = cells
        print(f"{n:>6}  " + "  ".join(f"{'':>9s}{c[0]:5.2f} {c[1]:4.2f}" for c in cells.values()))
    print("\nearlier epochs, all rows, against the last epoch's reference:")
    for epoch in EPOCHS:
        found = compare(plots.importances(at_epoch(rows, epoch), "val_acc", "max", dists),
                        reference)
        report["epochs"][epoch] = found
        print(f"  epoch {epoch}: " + ", ".join(f"{e} top1 {'yes' if t else 'no'} rho {s:.2f}"
                                               for e, (t, s) in found.items()))
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
