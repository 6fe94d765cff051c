"""The pictures of a finished search: learning curves, metric against each hyperparameter,
and hyperparameter importances from Optuna's own evaluators.

Everything is drawn on a bare `matplotlib.figure.Figure` (no pyplot), so nothing needs a
display and no state is shared between calls; matplotlib and Optuna are imported inside the
functions so that importing this module stays cheap. Each drawing function writes a PNG and
returns its Figure, so a test can inspect what was drawn.

The value a trial is judged by here is the *last* metric value it reported: that is the value
ASHA compared when it stopped (pruned) the trial, and the final value of a completed one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from optuna.distributions import BaseDistribution

log = logging.getLogger(__name__)

DPI = 100
CURVES_SIZE = (8.0, 5.0)  # inches: 800 x 500 px at DPI
PARAMS_WIDTH, PARAMS_ROW_HEIGHT, PARAMS_COLUMNS = 12.0, 3.5, 3
IMPORTANCE_WIDTH, IMPORTANCE_COLUMNS = 12.0, 3

# Evaluator short names, in the order summaries prefer them.
EVALUATORS = ("fanova", "ped_anova", "mean_decrease_impurity")

# How each outcome is drawn: the line of a learning curve and the marker of a scatter point.
# `end` is the marker put at the last point of a curve (where it was pruned / gave up).
STYLES: dict[str, dict[str, Any]] = {
    "completed": dict(color="tab:blue", linestyle="-", linewidth=1.2, alpha=0.7,
                      end=None, scatter=dict(marker="o", color="tab:blue")),
    "pruned": dict(color="tab:gray", linestyle="--", linewidth=1.0, alpha=0.55,
                   end="x", scatter=dict(marker="x", color="tab:gray")),
    "diverged": dict(color="tab:red", linestyle=":", linewidth=1.2, alpha=0.8,
                     end="X", scatter=dict(marker="X", color="tab:red")),
    "failed": dict(color="black", linestyle="-.", linewidth=1.0, alpha=0.6,
                   end="s", scatter=dict(marker="s", color="black")),
}
BEST_STYLE = dict(color="tab:orange", linewidth=3.0, alpha=1.0, zorder=5)


@dataclass(frozen=True)
class TrialCurve:
    """One trial as the pictures need it: its outcome, metric per epoch and sampled params."""

    trial_id: str
    outcome: str  # "completed", "pruned", "diverged", "failed"
    epochs: list[int]  # epochs with a metric value, ascending
    values: list[float]  # the search metric at those epochs (e.g. val_acc)
    params: dict[str, float]  # the sampled hyperparameters, real magnitudes

    @property
    def last(self) -> float | None:
        """The last reported value (the one ASHA judged), None without a finite one."""
        if not self.values or not _finite(self.values[-1]):
            return None
        return float(self.values[-1])


@dataclass(frozen=True)
class Plots:
    """What `draw_all` wrote (picture name -> PNG path) and the importances it computed."""

    paths: dict[str, Path] = field(default_factory=dict)
    importances: dict[str, dict[str, float]] = field(default_factory=dict)


# --- helpers -----------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    """True for a real, finite number."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def preload() -> None:
    """Import what drawing needs (matplotlib's Agg canvas, Optuna's importance evaluators
    and scikit-learn under them): about 2.4 s on 2 cores, paid in the background while the
    trials run (search/record/results.py PreloadTheEnd)."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import optuna.importance  # noqa: F401


def _style(outcome: str) -> dict[str, Any]:
    """The style of an outcome; an unknown outcome is drawn like a completed trial."""
    return STYLES.get(outcome, STYLES["completed"])


def _new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure of a fixed size, laid out by the constrained engine."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: str | Path) -> Figure:
    """Write `fig` as a PNG of exactly its size in pixels, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return fig


def _message(ax: Axes, text: str) -> None:
    """Say in an empty axes why there is nothing to draw."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
            fontsize=12, color="dimgray")
    ax.set_xticks([])
    ax.set_yticks([])


def varying_params(curves: Iterable[TrialCurve]) -> list[str]:
    """Names of the params that take more than one value across trials (the searched ones),
    in first-seen order; constants carry no information for a picture or an importance."""
    seen: dict[str, set[Any]] = {}
    for curve in curves:
        for name, value in curve.params.items():
            seen.setdefault(name, set()).add(_hashable(value))
    return [name for name, values in seen.items() if len(values) > 1]


def _hashable(value: Any) -> Any:
    """A value usable in a set (floats as floats, anything odd as its repr)."""
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _outcome_counts(curves: Sequence[TrialCurve]) -> str:
    """E.g. '5 completed, 2 pruned, 1 failed', in the order of STYLES."""
    counts: dict[str, int] = {}
    for curve in curves:
        counts[curve.outcome] = counts.get(curve.outcome, 0) + 1
    order = [o for o in STYLES if o in counts] + sorted(set(counts) - set(STYLES))
    return ", ".join(f"{counts[o]} {o}" for o in order)


# --- 1. learning curves --------------------------------------------------------------------


def learning_curves(curves: Sequence[TrialCurve], metric: str, mode: str, best_id: str | None,
                    path: str | Path) -> Figure:
    """Draw `metric` against epoch, one line per trial with at least one point.

    Each line's gid and label are its trial_id. Completed trials are solid, pruned ones dashed
    and faded with an 'x' where they were stopped, diverged (red, dotted) and failed (black,
    dash-dot) ones end in their own marker; the best trial is thick and orange. The legend
    explains the styles rather than naming every trial. 800 x 500 px.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(*CURVES_SIZE)
    ax = fig.add_subplot()
    drawn = [c for c in curves if c.epochs and c.values]
    # Draw the best last so that it lies on top.
    for curve in sorted(drawn, key=lambda c: c.trial_id == best_id):
        _curve_line(ax, curve, best=curve.trial_id == best_id)
    direction = "higher" if mode == "max" else "lower"
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} ({direction} is better)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    title = f"Learning curves: {len(curves)} trials"
    if curves:
        title += f" ({_outcome_counts(curves)})"
    ax.set_title(title, fontsize=11)
    if not drawn:
        _message(ax, "no trial reported a metric value")
    handles = _legend_handles(Line2D, drawn, best_id)
    if handles:
        ax.legend(handles=handles, loc="best", fontsize=9)
    return _save(fig, path)


def _curve_line(ax: Axes, curve: TrialCurve, best: bool) -> None:
    """Add the one Line2D of a trial, styled by its outcome (and as the best)."""
    style = _style(curve.outcome)
    kwargs: dict[str, Any] = dict(color=style["color"], linestyle=style["linestyle"],
                                  linewidth=style["linewidth"], alpha=style["alpha"])
    n = min(len(curve.epochs), len(curve.values))
    if style["end"] is not None:  # mark where the trial stopped
        kwargs.update(marker=style["end"], markevery=[n - 1], markersize=7)
    elif n == 1:  # a single point is invisible as a line
        kwargs.update(marker="o", markersize=4)
    if best:
        kwargs.update(BEST_STYLE)
    ax.plot(curve.epochs[:n], curve.values[:n], gid=curve.trial_id, label=curve.trial_id,
            **kwargs)


def _legend_handles(line_cls: type, drawn: Sequence[TrialCurve], best_id: str | None) -> list:
    """Proxy lines, one per outcome present and one for the best: a legend of styles."""
    handles = []
    present = {c.outcome if c.outcome in STYLES else "completed" for c in drawn}
    for outcome, style in STYLES.items():
        if outcome in present:
            handles.append(line_cls([], [], color=style["color"], linestyle=style["linestyle"],
                                    linewidth=style["linewidth"], alpha=style["alpha"],
                                    marker=style["end"], label=outcome))
    if best_id is not None and any(c.trial_id == best_id for c in drawn):
        handles.append(line_cls([], [], color=BEST_STYLE["color"],
                                linewidth=BEST_STYLE["linewidth"], label=f"best {best_id}"))
    return handles


# --- 2. metric against each hyperparameter -------------------------------------------------


def metric_vs_params(curves: Sequence[TrialCurve], metric: str, log_params: Iterable[str],
                     path: str | Path) -> Figure:
    """Scatter each trial's last reported `metric` value against each searched param.

    The y value is the last value a trial reported (the one ASHA judged when it pruned it),
    not its best. One subplot per param that varies across trials (constants are skipped),
    log x axis for the names in `log_params`; one scatter collection per outcome per subplot,
    pruned trials marked apart from completed ones. Up to 3 columns, 12 in wide, 3.5 in a row.
    """
    names = varying_params(curves)
    points = [c for c in curves if c.last is not None]
    ncols = max(1, min(PARAMS_COLUMNS, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = _new_figure(PARAMS_WIDTH, PARAMS_ROW_HEIGHT * nrows)
    if not names:
        _message(fig.add_subplot(), "no hyperparameter varies across trials")
        return _save(fig, path)
    fig.suptitle(f"{metric} (last reported value) against each hyperparameter, "
                 f"{len(points)} of {len(curves)} trials", fontsize=11)
    log_set = set(log_params)
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _param_panel(ax, points, name, metric, log_x=name in log_set, first=i % ncols == 0)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=9)
    return _save(fig, path)


def _param_panel(ax: Axes, points: Sequence[TrialCurve], name: str, metric: str, log_x: bool,
                 first: bool) -> None:
    """One subplot: the last metric value of each trial against the param `name`."""
    outcomes = [o for o in STYLES if any(_outcome_key(c) == o for c in points)]
    for outcome in outcomes:
        xs, ys = [], []
        for curve in points:
            if _outcome_key(curve) == outcome and _finite(curve.params.get(name)):
                xs.append(float(curve.params[name]))
                ys.append(curve.last)
        ax.scatter(xs, ys, label=outcome, alpha=0.8, s=28, **_style(outcome)["scatter"])
    xs_all = [float(c.params[name]) for c in points if _finite(c.params.get(name))]
    if log_x and xs_all and min(xs_all) > 0:
        ax.set_xscale("log")
    elif log_x and xs_all:  # a log axis needs positive values
        log.warning("metric_vs_params: %s has values <= 0, drawn on a linear axis", name)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel(name + (" (log)" if ax.get_xscale() == "log" else ""))
    if first:
        ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)


def _outcome_key(curve: TrialCurve) -> str:
    """The outcome a curve is drawn as (unknown outcomes as completed)."""
    return curve.outcome if curve.outcome in STYLES else "completed"


# --- 3. importance chart -------------------------------------------------------------------


def importance_chart(importances: Mapping[str, Mapping[str, float]], path: str | Path) -> Figure:
    """Horizontal bars of hyperparameter importances, one panel per evaluator, the most
    important param on top; up to 3 panels a row, 12 in wide."""
    names = list(importances)
    ncols = max(1, min(IMPORTANCE_COLUMNS, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    n_params = max((len(v) for v in importances.values()), default=0)
    row_height = max(2.5, 0.45 * n_params + 1.3)
    fig = _new_figure(IMPORTANCE_WIDTH, row_height * nrows)
    if not names:
        _message(fig.add_subplot(), "no importances: too few completed trials")
        return _save(fig, path)
    fig.suptitle("Hyperparameter importance (normalised to sum to 1 per evaluator)", fontsize=11)
    for i, name in enumerate(names):
        _importance_panel(fig.add_subplot(nrows, ncols, i + 1), name, importances[name])
    return _save(fig, path)


def _importance_panel(ax: Axes, evaluator: str, values: Mapping[str, float]) -> None:
    """One evaluator's bars, sorted so that the largest importance is the top bar."""
    ranked = sorted(values.items(), key=lambda kv: kv[1])  # barh draws bottom-up
    labels = [k for k, _ in ranked]
    widths = [float(v) for _, v in ranked]
    ax.barh(labels, widths, color="tab:blue", alpha=0.8)
    for y, w in enumerate(widths):
        ax.text(w, y, f" {w:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max([1.0, *widths]) * 1.15)
    ax.set_title(evaluator, fontsize=10)
    ax.set_xlabel("importance")
    ax.grid(True, axis="x", alpha=0.3)


# --- 4. importances ------------------------------------------------------------------------


def importances(curves: Sequence[TrialCurve], metric: str, mode: str,
                distributions: Mapping[str, BaseDistribution]) -> dict[str, dict[str, float]]:
    """Hyperparameter importances by Optuna's evaluators: {evaluator: {param: share}}.

    Computed on an in-memory study of the *completed* trials only, each valued at its last
    reported `metric` (as Optuna's get_param_importances uses only COMPLETE trials): a pruned
    trial's last value comes from an earlier epoch than a completed one's, so mixing them would
    credit the params with the effect of training length. Params are those that vary across
    trials; one missing from `distributions`, or whose distribution does not hold the observed
    values, gets a float distribution over its observed range. Shares are normalised to sum to
    1 per evaluator. {} when fewer than 2 usable trials or no varying param; an evaluator that
    raises is skipped with a warning.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    names = varying_params(curves)
    usable = [c for c in curves if c.outcome == "completed" and c.last is not None
              and all(_finite(c.params.get(n)) for n in names)]
    names = varying_params(usable)
    if len(usable) < 2 or not names:
        log.info("importances of %s: %d usable completed trials, %d varying params: none",
                 metric, len(usable), len(names))
        return {}
    with _quiet_optuna():
        study = _study(usable, names, mode, distributions)
        if study is None:
            return {}
        result = {}
        # Sorted: Optuna 5.0's MeanDecreaseImpurityImportanceEvaluator pairs its forest's
        # columns (params sorted by name) with `params` in the caller's order.
        for short, evaluator in _evaluators():
            shares = _evaluate(short, evaluator, study, sorted(names))
            if shares is not None:
                result[short] = shares
    return result


def _evaluators() -> list[tuple[str, Any]]:
    """(short name, evaluator) for the evaluators the installed Optuna has."""
    import optuna.importance as imp

    found = [("fanova", getattr(imp, "FanovaImportanceEvaluator", None), {"seed": 0}),
             ("ped_anova", getattr(imp, "PedAnovaImportanceEvaluator", None), {}),
             ("mean_decrease_impurity",
              getattr(imp, "MeanDecreaseImpurityImportanceEvaluator", None), {"seed": 0})]
    out = []
    for short, cls, kwargs in found:
        if cls is None:
            continue
        try:
            out.append((short, cls(**kwargs)))
        except Exception as e:  # noqa: BLE001 - an evaluator is optional
            log.warning("importance evaluator %s unavailable: %s", short, e)
    return out


def _evaluate(short: str, evaluator: Any, study: Any, names: list[str]) -> dict[str, float] | None:
    """One evaluator's normalised shares, sorted high to low; None (with a warning) if it
    raises or gives non-finite numbers."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            raw = evaluator.evaluate(study, params=names)
        for w in caught:
            log.debug("importance evaluator %s: %s", short, w.message)
    except Exception as e:  # noqa: BLE001 - skip the evaluator, keep the others
        log.warning("importance evaluator %s failed, skipped: %s: %s", short, type(e).__name__, e)
        return None
    values = {n: float(raw.get(n, 0.0)) for n in names}
    if not all(math.isfinite(v) and v >= 0 for v in values.values()):
        log.warning("importance evaluator %s gave non-finite importances, skipped: %s",
                    short, values)
        return None
    total = sum(values.values())
    shares = ({n: v / total for n, v in values.items()} if total > 0
              else {n: 1.0 / len(values) for n in values})  # as get_param_importances does
    return dict(sorted(shares.items(), key=lambda kv: kv[1], reverse=True))


def _study(usable: Sequence[TrialCurve], names: list[str], mode: str,
           distributions: Mapping[str, BaseDistribution]) -> Any:
    """An in-memory Optuna study holding the usable trials as COMPLETE trials (or None)."""
    import optuna

    dists = {n: _distribution(n, [float(c.params[n]) for c in usable], distributions.get(n))
             for n in names}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    added = 0
    for curve in usable:
        params = {n: _param_value(dists[n], float(curve.params[n])) for n in names}
        try:
            trial = optuna.trial.create_trial(params=params, distributions=dists,
                                              value=curve.last,
                                              state=optuna.trial.TrialState.COMPLETE)
            study.add_trial(trial)
            added += 1
        except Exception as e:  # noqa: BLE001 - a trial Optuna rejects is left out
            log.warning("importances: trial %s left out: %s", curve.trial_id, e)
    return study if added >= 2 else None


def _distribution(name: str, values: list[float], given: BaseDistribution | None) -> Any:
    """`given` when it holds every observed value, else a float range over the values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(given, FloatDistribution | IntDistribution):
        holds = all(given.low <= v <= given.high for v in values)
    elif isinstance(given, CategoricalDistribution):
        holds = all(v in given.choices for v in values)
    else:
        holds = False
    if holds:
        return given
    if given is not None:
        log.warning("importances: %s's distribution %s does not hold its values %s..%s; "
                    "using their range", name, given, min(values), max(values))
    return FloatDistribution(min(values), max(values))


def _param_value(dist: Any, value: float) -> Any:
    """A float param as its distribution expects it (an int for an IntDistribution, the
    matching choice for a categorical one)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, IntDistribution):
        return int(round(value))
    if isinstance(dist, CategoricalDistribution):
        return next((c for c in dist.choices if c == value), value)
    return value


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO chatter ('A new study created in memory') for the block."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


# --- 5. summary line -----------------------------------------------------------------------


def importance_line(importances: Mapping[str, Mapping[str, float]]) -> str:
    """One summary line, e.g. 'importance (fanova): lr 0.71, beta1 0.18, eps 0.07', for the
    preferred evaluator (fanova, then ped_anova, then mean_decrease_impurity); '' if none."""
    if not importances:
        return ""
    name = next((e for e in EVALUATORS if e in importances), next(iter(importances)))
    ranked = sorted(importances[name].items(), key=lambda kv: kv[1], reverse=True)
    return f"importance ({name}): " + ", ".join(f"{k} {v:.2f}" for k, v in ranked)


# --- 6. everything -------------------------------------------------------------------------


def draw_all(curves: Sequence[TrialCurve], metric: str, mode: str, best_id: str | None,
             log_params: Iterable[str], distributions: Mapping[str, BaseDistribution],
             folder: str | Path) -> Plots:
    """Write learning_curves.png, metric_vs_params.png and (when there are importances)
    importances.png into `folder`; return their paths and the importances.

    Never raises for what a search leaves behind: degenerate input draws what it can, and a
    picture that fails anyway is logged and left out, since pictures are an extra to a search.
    """
    folder = Path(folder)
    curves = list(curves)
    log_params = set(log_params)
    paths: dict[str, Path] = {}
    found: dict[str, dict[str, float]] = {}

    def attempt(name: str, draw: Any) -> None:
        path = folder / f"{name}.png"
        try:
            fig = draw(path)
            fig.clear()
            paths[name] = path
        except Exception:
            log.exception("could not draw %s", path)

    attempt("learning_curves", lambda p: learning_curves(curves, metric, mode, best_id, p))
    attempt("metric_vs_params", lambda p: metric_vs_params(curves, metric, log_params, p))
    try:
        dists = _with_log(distributions, curves, log_params)
        found = importances(curves, metric, mode, dists)
    except Exception:
        log.exception("could not compute importances of %s", metric)
    if found:
        attempt("importances", lambda p: importance_chart(found, p))
    return Plots(paths=paths, importances=found)


def _with_log(distributions: Mapping[str, BaseDistribution], curves: Sequence[TrialCurve],
              log_params: set[str]) -> dict[str, Any]:
    """`distributions` completed with a float range (log for `log_params`) for each varying
    param it lacks, so that PED-ANOVA's grid follows the scale the param was searched on."""
    from optuna.distributions import FloatDistribution

    out: dict[str, Any] = dict(distributions)
    for name in varying_params(curves):
        if name in out:
            continue
        values = [float(c.params[name]) for c in curves if _finite(c.params.get(name))]
        if len(values) >= 2 and min(values) < max(values):
            log_scale = name in log_params and min(values) > 0
            out[name] = FloatDistribution(min(values), max(values), log=log_scale)
    return out
