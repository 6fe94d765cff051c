"""Warm start measured by replay (issue 27): does an earlier search make the next one cheaper?

    python -m bench.search --warm                       # every scenario, 50 seeds
    python -m bench.search --warm --scenarios digits<digits28 --seeds 10

A scenario is a target table and a source: another table (digits28's configurations
teaching digits, and back) or a disjoint half of the target's own configurations (the
table's rows split once, in two halves: the target is one, the source the other). Per seed,
the earlier search is `--source-trials` configurations drawn from the source (a random
search run to the end: completed trials with their per-epoch values). It reaches the new
search through `search/warm_start.py`'s own mapping (`mapped`, as a source of unknown config)
and `OptunaSearch(history=...)` / `points_to_evaluate`, as `search.run` passes them:

- `cold`: nothing;
- `top`: the source's `search.warm_start_top` (2) best configurations run first;
- `history`: every source trial joins the study (TPE and GP count them among their start-up
  trials and model them; random search ignores them);
- `both`.

Each for random, TPE and GP, with FIFO and with ASHA (the project's default rungs). Costs
are the new search's own trial-epochs and simulated seconds (bench/replay.py): what the
earlier search spent is already spent. A run stops at the q97 target or at `--budget`
trial-epochs. Ratios are to the same sampler and scheduler cold, with 95% bootstrap
intervals over seeds.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from typing import Any

import numpy as np

from bench import curves
from bench import replay as R
from bench.search import summarise
from search.config import SchedulerConfig, SearchSection

QUANTILES = (0.90, 0.97)
VARIANTS = ("cold", "top", "history", "both")
SAMPLERS = ("random", "tpe", "gp")
SCHEDULERS = ("fifo", "asha")
# target table <- source: another table's name, or "half" (the other half of the target)
SCENARIOS = {
    "digits<digits28": ("digits", "digits28"),
    "digits28<digits": ("digits28", "digits"),
    "digits<half": ("digits", "half"),
    "digits28<half": ("digits28", "half"),
    "regression<half": ("regression", "half"),
    "charlm<half": ("charlm", "half"),
}


def subset(t: R.Table, rows: np.ndarray) -> R.Table:
    """Table `t` restricted to `rows`."""
    return R.Table(names=t.names, space=t.space, epochs=t.epochs, points=t.points[rows],
                   val_acc=[t.val_acc[i] for i in rows], epoch_s=[t.epoch_s[i] for i in rows],
                   trial_overhead_s=t.trial_overhead_s, epoch_overhead_s=t.epoch_overhead_s)


def halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A table's rows in two disjoint halves (target, source), split once (seed 0)."""
    order = np.random.default_rng(0).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def earlier_search(raw_rows: list[dict], values: list[list[float]], target: R.Table,
                   rows: np.ndarray, seed: int, k: int, top: int) -> tuple[list, list]:
    """(history, points): `k` source rows drawn with `seed`, mapped into the target's space
    by search/warm_start.py, as FrozenTrials for the study and the `top` best configurations
    to run first."""
    import optuna

    from search import warm_start
    from search.space import DefineByRun

    space_keys, order = target.space.keys(), DefineByRun(target.space).order
    drawn = np.random.default_rng(10_000 + seed).choice(rows, size=min(k, len(rows)),
                                                        replace=False)
    history, ranked = [], []
    for i in drawn:
        curve = values[i]
        if not math.isfinite(curve[-1]):
            continue  # diverged: an earlier search's failed trial is not imported
        past = warm_start.Past(dict(raw_rows[i]["params"]), optuna.trial.TrialState.COMPLETE,
                               curve[-1], dict(enumerate(curve, start=1)))
        out = warm_start.mapped(past, None, space_keys, order)
        if isinstance(out, str):
            continue
        params, dists = out
        history.append(optuna.trial.create_trial(
            state=past.state, value=past.value, params=params, distributions=dists,
            intermediate_values=past.intermediate_values,
            user_attrs={warm_start.SOURCE_ATTR: "replay"}))
        ranked.append((-past.value, params))
    ranked.sort(key=lambda x: x[0])
    return history, [p for _, p in ranked[:top]]


def methods() -> list[tuple[str, R.Method, str]]:
    """(name, method, variant) for every sampler x scheduler x variant."""
    defaults = SchedulerConfig(name="asha")
    out = []
    for sampler in SAMPLERS:
        for sched in SCHEDULERS:
            m = R.Method(f"{sampler}+{sched}", SearchSection(sampler=sampler,
                                                            points_to_evaluate=[]),
                         SchedulerConfig(name=sched, grace_period=defaults.grace_period,
                                         reduction_factor=defaults.reduction_factor))
            out.extend((f"{sampler}+{sched} {v}", m, v) for v in VARIANTS)
    return out


_STATE: dict[str, Any] = {}


def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore")


def prepare(scenario: str, k: int, top: int) -> dict[str, Any]:
    """The target table and the source rows of a scenario."""
    target_task, source_task = SCENARIOS[scenario]
    raw = curves.load(curves.table_path(target_task))
    whole = R.table(raw)
    if source_task == "half":
        mine, theirs = halves(len(whole.val_acc))
        src_raw, src_values, src_rows = raw["trials"], whole.val_acc, theirs
        target = subset(whole, mine)
    else:
        other = curves.load(curves.table_path(source_task))
        src_raw, src_values = other["trials"], R.table(other).val_acc
        src_rows, target = np.arange(len(src_values)), whole
    return {"target": target, "src_raw": src_raw, "src_values": src_values,
            "src_rows": src_rows, "k": k, "top": top}


def _one(job: tuple[str, R.Method, str, int, int, float]) -> dict[str, Any]:
    name, m, variant, seed, budget, stop_at = job
    st = _STATE  # the scenario's, set before the workers forked
    history, points = earlier_search(st["src_raw"], st["src_values"], st["target"],
                                     st["src_rows"], seed, st["k"], st["top"])
    trace = R.replay(st["target"], m, seed, budget_epochs=budget, stop_at=stop_at,
                     history=history if variant in ("history", "both") else [],
                     points=points if variant in ("top", "both") else [])
    best, curve = -math.inf, []
    for _, _, value, epochs, seconds in trace.results:
        best = max(best, value)
        curve.append((epochs, seconds, best))
    return {"method": name, "seed": seed, "curve": curve, "trials": len(trace.trials),
            "imported": len(history)}


def run(scenario: str, seeds: int, budget: int, k: int, top: int, jobs: int) -> dict[str, Any]:
    """Every method x seed of one scenario, in `jobs` processes."""
    st = prepare(scenario, k, top)
    tgts = R.targets(st["target"], QUANTILES)
    ms = methods()
    work = [(name, m, v, seed, budget, max(tgts.values()))
            for name, m, v in ms for seed in range(seeds)]
    start = time.perf_counter()
    _STATE.clear()
    _STATE.update(st)  # forked into the workers
    with multiprocessing.get_context("fork").Pool(jobs, _quiet) as pool:
        runs = pool.map(_one, work, chunksize=1)
    names = [name for name, _, _ in ms]
    summary = summarise(runs, names, tgts, budget, base=lambda n: n.rsplit(" ", 1)[0] + " cold")
    sign = -1.0 if curves.load(curves.table_path(SCENARIOS[scenario][0])).get(
        "mode") == "min" else 1.0
    return {"scenario": scenario, "targets": {q: sign * v for q, v in tgts.items()},
            "rows": len(st["target"].val_acc), "source_rows": len(st["src_rows"]),
            "source_trials": k, "top": top, "seeds": seeds, "budget_epochs": budget,
            "imported_median": float(np.median([r["imported"] for r in runs])),
            "replay_s": time.perf_counter() - start, "summary": summary, "sign": sign}


def print_scenario(res: dict[str, Any]) -> None:
    sign = res["sign"]
    print(f"\n== {res['scenario']}: target {res['rows']} configurations, source "
          f"{res['source_trials']} of {res['source_rows']} drawn per seed "
          f"({res['imported_median']:.0f} imported, median); {res['seeds']} seeds; "
          f"replayed in {res['replay_s']:.0f} s")
    print(f"{'method':24s} {'q':>4s} {'target':>8s} {'hit':>6s} {'med ep':>7s} "
          f"{'vs cold [95% CI]':>20s} {'ERT ep':>7s} {'med s':>7s} {'vs cold s':>8s}")
    for r in res["summary"]:
        lo, hi = r["ci_epochs"]
        print(f"{r['method']:24s} {r['quantile']:4.2f} {sign * r['target']:8.4f} "
              f"{r['reached']:3d}/{r['runs']:<2d} {r['median_epochs']:7.0f} "
              f"{r['ratio_epochs']:8.2f} [{lo:.2f}, {hi:.2f}] {r['ert_epochs']:7.0f} "
              f"{r['median_s']:7.1f} {r['ratio_s']:8.2f}")
