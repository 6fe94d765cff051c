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
import numbers
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
JITTER = 0.15  # half the width of a categorical param's strip, in choice-index units

# Importances need at least this many trials reaching one epoch. Measured by
# `python -m bench.importance_min` (bench/RESULTS.md, 2026-12-03): on a 288-row digits table,
# random subsets of 8 trials gave fANOVA the whole table's most important parameter 88% of
# the time (MDI 97%), of 6 trials 53% (72%), of 4 38% (53%): below 8, about a coin toss.
MIN_IMPORTANCE_TRIALS = 8

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
    # The sampled hyperparameters, real magnitudes: floats, ints, or a categorical key's
    # choice (str, bool, None); a conditional key is absent where its condition did not hold.
    params: dict[str, Any]

    @property
    def last(self) -> float | None:
        """The last reported value (the one ASHA judged), None without a finite one."""
        if not self.values or not _finite(self.values[-1]):
            return None
        return float(self.values[-1])


@dataclass(frozen=True)
class Basis:
    """The trials importances rest on: every trial that reached `epoch`, each valued there
    (the deepest epoch enough trials reached, so pruned trials count too)."""

    epoch: int
    curves: list[TrialCurve]

    @property
    def trials(self) -> int:
        return len(self.curves)


@dataclass
class Plots:
    """What `draw_all` wrote (picture name -> PNG path), the importances it computed and
    what they rest on (None: too few trials; `completed` of them completed)."""

    paths: dict[str, Path] = field(default_factory=dict)
    importances: dict[str, dict[str, float]] = field(default_factory=dict)
    basis: Basis | None = None
    completed: int = 0
    needed: int = MIN_IMPORTANCE_TRIALS
    skipped: str = ""  # why importances were not computed at all

    def importance_line(self) -> str:
        """The summary's line: the importances and what they rest on, or why there are
        none; '' when there were enough trials but no parameter varied."""
        if self.skipped:
            return self.skipped
        if self.importances:
            return importance_line(self.importances, self.basis)
        if self.basis is None:
            return (f"too few trials for importances ({self.completed} completed; "
                    f"{self.needed} needed at one epoch)")
        return ""


# --- helpers -----------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    """True for a real, finite number."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _number(x: Any) -> bool:
    """True for a finite real number that is not a bool (a bool is a category here)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    """True for an integer that is not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _categorical_values(values: Iterable[Any]) -> bool:
    """Whether observed values are a category's (any str, bool, None or other non-number)."""
    return any(not isinstance(v, numbers.Real) or isinstance(v, bool) for v in values)


def _same(a: Any, b: Any) -> bool:
    """Equal as config values (1 and 1.0 are, 1 and true are not): search.config's rule."""
    from search.space_rules import same_value

    return same_value(a, b)


def _present(curves: Iterable[TrialCurve], name: str) -> list[Any]:
    """The values of `name` in the trials that have it (a conditional key may be absent)."""
    return [c.params[name] for c in curves if name in c.params]


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
    """A value usable in a set, with a bool kept apart from the equal int (true is not 1);
    anything unhashable as its repr."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return (isinstance(value, bool), value)


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
                     path: str | Path,
                     distributions: Mapping[str, BaseDistribution] | None = None) -> Figure:
    """Scatter each trial's last reported `metric` value against each searched param.

    The y value is the last value a trial reported (the one ASHA judged when it pruned it),
    not its best. One subplot per param that varies across trials (constants are skipped),
    drawn from the trials that have it (a conditional key is absent from some). A float or
    int param gets a linear x axis, log for the names in `log_params` or whose distribution
    is log; a categorical one (a CategoricalDistribution in `distributions`, or, without a
    distribution, a str/bool/None value) a jittered strip per choice. One scatter collection
    per outcome per subplot, pruned trials marked apart from completed ones. Up to 3
    columns, 12 in wide, 3.5 in a row.
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
    log_set, dists = set(log_params), distributions or {}
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        dist = dists.get(name)
        choices = _choices(_present(curves, name), dist)
        if choices is None:
            log_x = name in log_set or bool(getattr(dist, "log", False))
            _numeric_x(ax, points, name, log_x)
        else:
            _choice_x(ax, points, name, choices)
        _label_panel(ax, name, metric, first=i % ncols == 0)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=9)
    return _save(fig, path)


def _choices(values: list[Any], dist: BaseDistribution | None) -> list[Any] | None:
    """A categorical param's choices in the order its strips are drawn (the distribution's,
    then any observed value it lacks, first seen first); None for a numeric param."""
    given = getattr(dist, "choices", None)  # a CategoricalDistribution's, without importing it
    if given is None and (dist is not None or not _categorical_values(values)):
        return None
    choices = list(given or ())
    for v in values:
        if not any(_same(v, c) for c in choices):
            choices.append(v)
    return choices


def _numeric_x(ax: Axes, points: Sequence[TrialCurve], name: str, log_x: bool) -> None:
    """Scatter a float or int param at its value (trials without a finite number left out),
    on a log axis when asked for and every value is positive."""
    xs = [float(c.params[name]) if _number(c.params.get(name)) else None for c in points]
    _scatter_outcomes(ax, points, xs)
    drawn = [x for x in xs if x is not None]
    if log_x and drawn and min(drawn) > 0:
        ax.set_xscale("log")
        if all(_is_int(c.params[name]) for c in points if _number(c.params.get(name))):
            _int_log_ticks(ax)
    elif log_x and drawn:  # a log axis needs positive values
        log.warning("metric_vs_params: %s has values <= 0, drawn on a linear axis", name)


def _int_log_ticks(ax: Axes) -> None:
    """Plain labels at powers of 2 on an int param's log axis (16, 32, 64): matplotlib's
    default labels the minor ticks of a range under a decade as overlapping 2x10^1, 3x10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=2, numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _choice_x(ax: Axes, points: Sequence[TrialCurve], name: str, choices: list[Any]) -> None:
    """Scatter a categorical param as one strip per choice: x is the choice's index plus a
    seeded jitter (the same picture every time), tick labels the choices as YAML text."""
    import numpy as np

    from search.space import fmt

    jitter = np.random.default_rng(0).uniform(-JITTER, JITTER, len(points))
    xs: list[float | None] = []
    for curve, dx in zip(points, jitter, strict=True):
        value = curve.params.get(name)
        index = next((i for i, c in enumerate(choices) if _same(value, c)), None)
        xs.append(None if name not in curve.params or index is None else index + float(dx))
    _scatter_outcomes(ax, points, xs)
    ax.set_xticks(range(len(choices)), labels=[fmt(c) for c in choices])
    ax.set_xlim(-0.5, len(choices) - 0.5)


def _scatter_outcomes(ax: Axes, points: Sequence[TrialCurve],
                      xs: Sequence[float | None]) -> None:
    """One scatter per outcome present among `points` (so every panel has the same legend),
    of the points with an x (`xs` is aligned with `points`; None leaves a trial out)."""
    outcomes = [o for o in STYLES if any(_outcome_key(c) == o for c in points)]
    for outcome in outcomes:
        xy = [(x, c.last) for x, c in zip(xs, points, strict=True)
              if x is not None and _outcome_key(c) == outcome]
        px, py = [x for x, _ in xy], [y for _, y in xy]
        ax.scatter(px, py, label=outcome, alpha=0.8, s=28, **_style(outcome)["scatter"])


def _label_panel(ax: Axes, name: str, metric: str, first: bool) -> None:
    """Title, axis labels (the y label only on a row's first panel) and grid of a panel."""
    ax.set_title(name, fontsize=10)
    ax.set_xlabel(name + (" (log)" if ax.get_xscale() == "log" else ""))
    if first:
        ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)


def _outcome_key(curve: TrialCurve) -> str:
    """The outcome a curve is drawn as (unknown outcomes as completed)."""
    return curve.outcome if curve.outcome in STYLES else "completed"


# --- 3. importance chart -------------------------------------------------------------------


def importance_chart(importances: Mapping[str, Mapping[str, float]], path: str | Path,
                     basis: Basis | None = None) -> Figure:
    """Horizontal bars of hyperparameter importances, one panel per evaluator, the most
    important param on top; up to 3 panels a row, 12 in wide. The title says what they
    rest on (`basis`) and, in red, where the evaluators disagree on the first parameter;
    each parameter keeps its colour in every panel, so a disagreement shows."""
    names = list(importances)
    ncols = max(1, min(IMPORTANCE_COLUMNS, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    n_params = max((len(v) for v in importances.values()), default=0)
    row_height = max(2.5, 0.45 * n_params + 1.3)
    fig = _new_figure(IMPORTANCE_WIDTH, row_height * nrows)
    if not names:
        _message(fig.add_subplot(), "no importances: too few completed trials")
        return _save(fig, path)
    rests = f", {basis.trials} trials at epoch {basis.epoch}" if basis else ""
    title = f"Hyperparameter importance (normalised to sum to 1 per evaluator{rests})"
    split = disagreement(importances)
    fig.suptitle(title + (f"\nevaluators disagree: {split}" if split else ""), fontsize=11,
                 color="tab:red" if split else "black")
    params = sorted({p for v in importances.values() for p in v})
    colours = {p: f"C{i % 10}" for i, p in enumerate(params)}
    for i, name in enumerate(names):
        _importance_panel(fig.add_subplot(nrows, ncols, i + 1), name, importances[name],
                          colours)
    return _save(fig, path)


def _importance_panel(ax: Axes, evaluator: str, values: Mapping[str, float],
                      colours: Mapping[str, str] | None = None) -> None:
    """One evaluator's bars, sorted so that the largest importance is the top bar."""
    ranked = sorted(values.items(), key=lambda kv: kv[1])  # barh draws bottom-up
    labels = [k for k, _ in ranked]
    widths = [float(v) for _, v in ranked]
    ax.barh(labels, widths, alpha=0.8,
            color=[(colours or {}).get(k, "tab:blue") for k in labels])
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
    trials, categorical ones included; one missing from `distributions`, or whose distribution
    does not hold the observed values, gets one inferred from them (categorical over the
    observed values if any is a str/bool/None, else an int or float range). A conditional
    param enters only the trials that have it: PED-ANOVA rates it, while fANOVA and MDI rate
    only the params every trial has (see `_params_for`). Shares are normalised to sum to 1 per
    evaluator. {} when fewer than 2 usable trials or no varying param; an evaluator that
    raises is skipped with a warning.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    usable = [c for c in curves if c.outcome == "completed" and c.last is not None]
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
        for short, evaluator in _evaluators():
            params = _params_for(short, study)
            shares = _evaluate(short, evaluator, study, params) if params else None
            if shares is not None:
                result[short] = shares
    return result


def _params_for(short: str, study: Any) -> list[str]:
    """The params an evaluator can rate on `study`, sorted by name: Optuna 5's
    MeanDecreaseImpurityImportanceEvaluator pairs its forest's columns (params sorted by
    name) with `params` in the caller's order.

    All three take categorical params (fANOVA and MDI one-hot encode them through
    _SearchSpaceTransform, PED-ANOVA fits a categorical Parzen estimator). Params missing
    from some trials differ: PED-ANOVA partitions the trials into regimes by whether (and
    with which distribution) a param is present (Conditional PED-ANOVA), so it rates every
    param. fANOVA and MDI fit one forest on the trials that have *all* the asked params and
    drop the rest; asked for a conditional param they would fit on that subset alone, where
    the param it depends on (e.g. the schedule) is constant and so rated 0. They are
    therefore asked only for the params every trial has, over all trials, and a
    conditional param gets no fANOVA/MDI share.
    """
    trials = study.get_trials(deepcopy=False)
    present = {n for t in trials for n in t.params}
    if short == "ped_anova":
        return sorted(present)
    everywhere = sorted(n for n in present if all(n in t.params for t in trials))
    if len(everywhere) < len(present):
        log.info("importances: %s rates %s, not the conditional %s", short, everywhere,
                 sorted(present - set(everywhere)))
    return everywhere


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
    """An in-memory Optuna study holding the usable trials as COMPLETE trials, each with the
    params it has (or None when fewer than 2 could be added)."""
    import optuna

    dists = {}
    for name in names:
        dist = _distribution(name, _present(usable, name), distributions.get(name))
        if dist is not None:
            dists[name] = dist
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    added = sum(_add_trial(study, curve, dists) for curve in usable)
    return study if added >= 2 else None


def _add_trial(study: Any, curve: TrialCurve, dists: Mapping[str, Any]) -> bool:
    """Add `curve` as a COMPLETE trial with the params it has; False (with a warning) when
    Optuna rejects it, e.g. for a value outside its distribution or NaN."""
    import optuna

    own = {n: d for n, d in dists.items() if n in curve.params}
    try:
        params = {n: _param_value(d, curve.params[n]) for n, d in own.items()}
        trial = optuna.trial.create_trial(params=params, distributions=own, value=curve.last,
                                          state=optuna.trial.TrialState.COMPLETE)
        study.add_trial(trial)
    except Exception as e:  # noqa: BLE001 - a trial Optuna rejects is left out
        log.warning("importances: trial %s left out: %s", curve.trial_id, e)
        return False
    return True


def _distribution(name: str, values: list[Any], given: BaseDistribution | None) -> Any:
    """`given` when it holds every observed value, else one inferred from them (None, with a
    warning, when there is nothing to infer it from)."""
    if given is not None and _holds(given, values):
        return given
    inferred = _inferred(values, given)
    if given is not None:
        log.warning("importances: %s's distribution %s does not hold its values %s; using %s",
                    name, given, _span(values), inferred)
    if inferred is None:
        log.warning("importances: %s has no usable value, left out", name)
    return inferred


def _holds(dist: BaseDistribution, values: list[Any]) -> bool:
    """Whether every value is one of a categorical's choices, or a number in a range (an
    integer one for an int range)."""
    choices = getattr(dist, "choices", None)
    if choices is not None:
        return all(any(_same(v, c) for c in choices) for v in values)
    low, high = getattr(dist, "low", None), getattr(dist, "high", None)
    if low is None or high is None:
        return False
    from optuna.distributions import IntDistribution

    whole = isinstance(dist, IntDistribution)
    return all(_number(v) and low <= v <= high and (not whole or float(v).is_integer())
               for v in values)


def _inferred(values: list[Any], given: BaseDistribution | None) -> Any:
    """A distribution for observed values: categorical over `given`'s choices and the
    observed ones if any value is a category's, an int range over integers, a float range
    otherwise; None without a finite number to span."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    choices = _choices(values, given if hasattr(given, "choices") else None)
    if choices is not None:
        return CategoricalDistribution(choices)
    finite = [v for v in values if _number(v)]
    if not finite:
        return None
    if all(_is_int(v) for v in finite):
        return IntDistribution(int(min(finite)), int(max(finite)))
    return FloatDistribution(float(min(finite)), float(max(finite)))


def _span(values: list[Any]) -> str:
    """Observed values in a few words for a warning: 'a..b' for numbers, else the set."""
    finite = [v for v in values if _number(v)]
    if len(finite) == len(values) and finite:
        return f"{min(finite)}..{max(finite)}"
    return repr(list({_hashable(v): v for v in values}.values()))


def _param_value(dist: Any, value: Any) -> Any:
    """A param as its distribution expects it: an int for an IntDistribution, the matching
    choice itself for a categorical one (true stays true, not 1), a float otherwise."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return next((c for c in dist.choices if _same(c, value)), value)
    if isinstance(dist, IntDistribution):
        return int(round(float(value)))
    return float(value)


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


def importance_line(importances: Mapping[str, Mapping[str, float]],
                    basis: Basis | None = None) -> str:
    """One summary line, e.g. 'importance (fanova, 8 trials at epoch 1): lr 0.71, beta1
    0.18, eps 0.07', for the preferred evaluator (fanova, then ped_anova, then
    mean_decrease_impurity); '' if none."""
    if not importances:
        return ""
    name = next((e for e in EVALUATORS if e in importances), next(iter(importances)))
    ranked = sorted(importances[name].items(), key=lambda kv: kv[1], reverse=True)
    rests = f", {basis.trials} trials at epoch {basis.epoch}" if basis else ""
    return f"importance ({name}{rests}): " + ", ".join(f"{k} {v:.2f}" for k, v in ranked)


def importance_basis(curves: Sequence[TrialCurve],
                     min_trials: int = MIN_IMPORTANCE_TRIALS) -> Basis | None:
    """The deepest epoch at least `min_trials` completed or pruned trials reached, with each
    of them cut there (as completed at that epoch, valued by its metric there); None when
    fewer than `min_trials` reached any epoch. Valuing every trial at one epoch keeps the
    effect of training length out of the importances, and lets ASHA's pruned trials count."""
    usable = [c for c in curves if c.outcome in ("completed", "pruned")]
    finite = {c.trial_id: {e for e, v in zip(c.epochs, c.values, strict=True) if _finite(v)}
              for c in usable}
    for epoch in sorted({e for es in finite.values() for e in es}, reverse=True):
        reached = [c for c in usable if epoch in finite[c.trial_id]]
        if len(reached) >= min_trials:
            cut = []
            for c in reached:
                k = c.epochs.index(epoch) + 1
                cut.append(TrialCurve(c.trial_id, "completed", c.epochs[:k], c.values[:k],
                                      c.params))
            return Basis(epoch, cut)
    return None


def disagreement(importances: Mapping[str, Mapping[str, float]]) -> str:
    """'' when every evaluator ranks the same parameter first, else which ranks what first
    ('fanova ranks lr first, ped_anova ranks eps first')."""
    tops = {e: max(v, key=v.get) for e, v in importances.items() if v}
    if len(set(tops.values())) <= 1:
        return ""
    return ", ".join(f"{e} ranks {top} first" for e, top in tops.items())


# --- 6. everything -------------------------------------------------------------------------


def draw_all(curves: Sequence[TrialCurve], metric: str, mode: str, best_id: str | None,
             log_params: Iterable[str], distributions: Mapping[str, BaseDistribution],
             folder: str | Path, min_trials: int = MIN_IMPORTANCE_TRIALS,
             values_vary: str = "") -> Plots:
    """Write learning_curves.png, metric_vs_params.png and (when there are importances)
    importances.png into `folder`; return their paths and the importances, computed on the
    deepest epoch at least `min_trials` trials reached (none below that). `values_vary`:
    why a trial's params are not the values it trained with (PBT): only its learning
    curves are drawn, and this is the importance line.

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
    if values_vary:
        return Plots(paths=paths, skipped=values_vary)
    attempt("metric_vs_params",
            lambda p: metric_vs_params(curves, metric, log_params, p, distributions))
    basis = importance_basis(curves, min_trials)
    try:
        if basis is not None:
            dists = _with_log(distributions, basis.curves, log_params)
            found = importances(basis.curves, metric, mode, dists)
    except Exception:
        log.exception("could not compute importances of %s", metric)
    if found:
        attempt("importances", lambda p: importance_chart(found, p, basis))
    return Plots(paths=paths, importances=found, basis=basis, needed=min_trials,
                 completed=sum(c.outcome == "completed" for c in curves))


def _with_log(distributions: Mapping[str, BaseDistribution], curves: Sequence[TrialCurve],
              log_params: set[str]) -> dict[str, Any]:
    """`distributions` completed with a numeric range (log for `log_params`) for each varying
    numeric param it lacks, so that PED-ANOVA's grid follows the scale the param was searched
    on. A categorical param it lacks is left to `importances`, which infers its choices."""
    from optuna.distributions import FloatDistribution, IntDistribution

    out: dict[str, Any] = dict(distributions)
    for name in varying_params(curves):
        values = [] if name in out else _present(curves, name)
        if not values or _categorical_values(values):
            continue
        finite = [v for v in values if _number(v)]
        if len(finite) >= 2 and min(finite) < max(finite):
            log_scale = name in log_params and min(finite) > 0
            if all(_is_int(v) for v in finite):
                out[name] = IntDistribution(int(min(finite)), int(max(finite)), log=log_scale)
            else:
                out[name] = FloatDistribution(float(min(finite)), float(max(finite)),
                                              log=log_scale)
    return out
