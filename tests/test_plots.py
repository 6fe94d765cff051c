"""The pictures of a finished search (search.record.plots), drawn for real with matplotlib and
Optuna's importance evaluators, then read back from the PNGs."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search.record import plots as plots_module
from search.record.plots import (
    Plots,
    TrialCurve,
    draw_all,
    importance_chart,
    importance_line,
    importances,
    learning_curves,
    metric_vs_params,
    varying_params,
)

JITTER = 0.15  # plots.JITTER: a strip point lies within this of its choice's index
LOG_PARAMS = {"lr", "eps"}
DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "beta1": FloatDistribution(0.8, 0.99),
    "eps": FloatDistribution(1e-10, 1e-6, log=True),
}


def _search() -> list[TrialCurve]:
    """8 trials of a 6-epoch ASHA search: 4 completed, 3 pruned (epoch 1 or 3), 1 failed.

    beta2 is fixed (a constant param), lr/beta1/eps are searched.
    """
    rng = random.Random(1)
    spec = [("t0", "completed", 6), ("t1", "pruned", 1), ("t2", "completed", 6),
            ("t3", "pruned", 3), ("t4", "completed", 6), ("t5", "pruned", 1),
            ("t6", "completed", 6), ("t7", "failed", 0)]
    curves = []
    for i, (tid, outcome, n) in enumerate(spec):
        lr = 10 ** rng.uniform(-5, -1)
        quality = 1.0 - 0.1 * abs(math.log10(lr) + 2.5)
        epochs = list(range(1, n + 1))
        values = [min(0.99, quality * (1 - 0.5 ** e)) for e in epochs]
        params = {"lr": lr, "beta1": 0.8 + 0.02 * i, "beta2": 0.999,
                  "eps": 10 ** rng.uniform(-10, -6)}
        curves.append(TrialCurve(tid, outcome, epochs, values, params))
    return curves


def _best(curves: list[TrialCurve]) -> str:
    done = [c for c in curves if c.outcome == "completed"]
    return max(done, key=lambda c: c.values[-1]).trial_id


def _read_png(path):
    """The PNG as an array, asserted not blank: several colours, real contrast."""
    import matplotlib.image

    img = matplotlib.image.imread(path)
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05, f"{path} looks blank"
    assert len(np.unique(np.round(rgb * 255).astype(int), axis=0)) > 10, f"{path}: one colour"
    return img


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> tuple[list[TrialCurve], str, Plots]:
    curves = _search()
    best = _best(curves)
    folder = tmp_path_factory.mktemp("plots")
    # 4 completed trials: the pictures' tests lower the importances' minimum of trials
    # (MIN_IMPORTANCE_TRIALS, tested on its own below) to draw them.
    return curves, best, draw_all(curves, "val_acc", "max", best, LOG_PARAMS, DISTRIBUTIONS,
                                  folder, min_trials=4)


def test_draw_all_writes_three_pngs(drawn):
    _, _, plots = drawn
    assert set(plots.paths) == {"learning_curves", "metric_vs_params", "importances"}
    for name, path in plots.paths.items():
        assert path.name == f"{name}.png" and path.is_file()
    assert _read_png(plots.paths["learning_curves"]).shape[:2] == (500, 800)
    # 3 varying params (lr, beta1, eps) -> one row of 3: 12 x 3.5 in at 100 dpi
    assert _read_png(plots.paths["metric_vs_params"]).shape[:2] == (350, 1200)
    assert _read_png(plots.paths["importances"]).shape[1] == 1200


def test_learning_curves_one_styled_line_per_trial(drawn, tmp_path):
    curves, best, _ = drawn
    fig = learning_curves(curves, "val_acc", "max", best, tmp_path / "lc.png")
    assert _read_png(tmp_path / "lc.png").shape[:2] == (500, 800)
    (ax,) = fig.axes
    lines = {line.get_gid(): line for line in ax.get_lines()}
    with_points = [c for c in curves if c.epochs]
    assert len(ax.get_lines()) == len(with_points) == 7  # the failed trial has no point
    assert set(lines) == {c.trial_id for c in with_points}
    for c in with_points:
        assert list(lines[c.trial_id].get_xdata()) == c.epochs
    by_outcome = {c.trial_id: c.outcome for c in curves}
    completed = {lines[t].get_linestyle() for t in lines if by_outcome[t] == "completed"}
    pruned = {lines[t].get_linestyle() for t in lines if by_outcome[t] == "pruned"}
    assert len(completed) == 1 and len(pruned) == 1 and completed != pruned
    # a pruned line has a marker at the epoch it was stopped
    pruned_line = lines["t3"]
    assert pruned_line.get_marker() not in (None, "None", "") and pruned_line.get_markevery()
    widths = {t: line.get_linewidth() for t, line in lines.items()}
    assert widths[best] == max(widths.values())
    assert all(w < widths[best] for t, w in widths.items() if t != best)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["completed", "pruned", f"best {best}"]  # styles, not one per trial
    assert "8 trials" in ax.get_title()
    assert ax.get_xlabel() == "epoch" and "val_acc" in ax.get_ylabel()


def test_metric_vs_params_axes_and_scales(drawn, tmp_path):
    curves, _, _ = drawn
    fig = metric_vs_params(curves, "val_acc", LOG_PARAMS, tmp_path / "mp.png")
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["lr", "beta1", "eps"]  # beta2 is constant
    for ax in axes:
        assert ax.get_xscale() == ("log" if ax.get_title() in LOG_PARAMS else "linear")
        # completed and pruned as separate collections; 7 trials with a value
        assert len(ax.collections) == 2
        assert sum(len(c.get_offsets()) for c in ax.collections) == 7
    # y is the last reported value
    lr_ax = axes[0]
    ys = sorted(float(y) for c in lr_ax.collections for y in c.get_offsets()[:, 1])
    assert ys == pytest.approx(sorted(c.values[-1] for c in curves if c.values))

    more = [TrialCurve(f"x{i}", "completed", [1], [0.5], {f"p{j}": i + j for j in range(5)})
            for i in range(3)]
    fig = metric_vs_params(more, "val_acc", set(), tmp_path / "mp5.png")
    assert len([ax for ax in fig.axes if ax.get_title()]) == 5
    assert _read_png(tmp_path / "mp5.png").shape[:2] == (700, 1200)  # 2 rows of 3


def test_importances_per_evaluator(drawn, tmp_path):
    _, _, plots = drawn
    found = plots.importances
    assert set(found) == {"fanova", "ped_anova", "mean_decrease_impurity"}
    for shares in found.values():
        assert set(shares) == {"lr", "beta1", "eps"}
        assert all(v >= 0 for v in shares.values())
        assert list(shares.values()) == sorted(shares.values(), reverse=True)
    assert sum(found["fanova"].values()) == pytest.approx(1.0)

    fig = importance_chart(found, tmp_path / "imp.png")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(found)
    for ax, shares in zip(panels, found.values(), strict=True):
        widths = [p.get_width() for p in ax.patches]
        assert widths == sorted(widths)  # bottom-up: the most important on top
        assert [t.get_text() for t in ax.get_yticklabels()][-1] == next(iter(shares))

    line = importance_line(found)
    assert line.startswith("importance (fanova): ")
    assert line.count(",") == 2 and importance_line({}) == ""


def test_importances_find_the_parameter_that_matters():
    """The metric depends on lr only (beta1 is noise): fanova ranks lr first."""
    rng = np.random.default_rng(0)
    curves = []
    for i in range(30):
        lr = float(10 ** rng.uniform(-5, -1))
        value = -((math.log10(lr) + 2.5) ** 2) + float(rng.normal(0, 0.05))
        params = {"lr": lr, "beta1": float(rng.uniform(0.8, 0.99))}
        curves.append(TrialCurve(f"t{i}", "completed", [1, 2], [value - 1, value], params))
    found = importances(curves, "val_acc", "max", DISTRIBUTIONS)
    assert found["fanova"]["lr"] > 0.7
    # every evaluator agrees; lr before beta1 in the params also checks the names are not
    # mislabelled (Optuna's MDI evaluator pairs columns sorted by name with `params` as given)
    for name, shares in found.items():
        assert max(shares, key=shares.get) == "lr", (name, shares)


def test_importances_use_completed_trials_only():
    curves = _search()
    done = [c for c in curves if c.outcome == "completed"]
    assert importances(curves, "val_acc", "max", DISTRIBUTIONS)["fanova"] == pytest.approx(
        importances(done, "val_acc", "max", DISTRIBUTIONS)["fanova"])
    assert importances(done[:1] + curves[1:2], "val_acc", "max", DISTRIBUTIONS) == {}


def test_importances_infer_a_missing_or_wrong_distribution(caplog):
    curves = [c for c in _search() if c.outcome == "completed"]
    wrong = {"lr": FloatDistribution(0.5, 1.0)}  # does not hold the sampled lrs
    with caplog.at_level(logging.WARNING, logger="search.record.plots"):
        found = importances(curves, "val_acc", "min", wrong)
    assert set(found["fanova"]) == {"lr", "beta1", "eps"}
    assert "lr's distribution" in caplog.text


@pytest.mark.parametrize("case", ["none", "one", "all_failed", "no_epochs", "constant"])
def test_degenerate_input_draws_without_raising(case, tmp_path):
    one = TrialCurve("a", "completed", [1, 2], [0.3, 0.4], {"lr": 1e-3})
    curves = {
        "none": [],
        "one": [one],
        "all_failed": [TrialCurve(f"f{i}", "failed", [], [], {"lr": 10.0 ** -i})
                       for i in range(3)],
        "no_epochs": [one, TrialCurve("b", "pruned", [], [], {"lr": 1e-2})],
        "constant": [one, TrialCurve("b", "completed", [1], [float("nan")], {"lr": 1e-3})],
    }[case]
    plots = draw_all(curves, "val_acc", "max", "a" if curves else None, {"lr"}, {}, tmp_path)
    assert plots.importances == {}
    assert set(plots.paths) == {"learning_curves", "metric_vs_params"}
    assert not (tmp_path / "importances.png").exists()
    for path in plots.paths.values():
        assert path.is_file()
    assert _read_png(plots.paths["learning_curves"]).shape[:2] == (500, 800)
    importance_chart({}, tmp_path / "empty.png")  # an empty chart says so rather than raising
    assert (tmp_path / "empty.png").is_file()


# --- a general space: categorical, int and conditional params ----------------------------

SCHEDULES = ["constant", "cosine", "onecycle"]
MIXED = {
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "train.schedule": CategoricalDistribution(SCHEDULES),
    "train.batch_size": IntDistribution(16, 256, log=True),
    "train.warmup_fraction": FloatDistribution(0.0, 0.5),
}


def _mixed(n: int = 30, seed: int = 0) -> list[TrialCurve]:
    """`n` completed trials whose metric depends strongly on the schedule (0.5, 0.7, 0.9) and
    hardly on anything else (lr, batch_size, warmup_fraction are noise); warmup_fraction is
    conditional: present only where the schedule is onecycle. Each last value is unique."""
    rng = np.random.default_rng(seed)
    curves = []
    for i in range(n):
        schedule = SCHEDULES[i % 3]
        value = {"constant": 0.5, "cosine": 0.7, "onecycle": 0.9}[schedule] + 1e-4 * i
        params = {"lr": float(10 ** rng.uniform(-5, -1)), "train.schedule": schedule,
                  "train.batch_size": int(2 ** rng.integers(4, 9))}
        if schedule == "onecycle":
            params["train.warmup_fraction"] = float(rng.uniform(0.0, 0.5))
        curves.append(TrialCurve(f"t{i}", "completed", [1, 2], [value - 0.1, value], params))
    return curves


def _panels(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def _points(ax) -> np.ndarray:
    """Every (x, y) drawn in a panel, all outcomes together."""
    return np.concatenate([c.get_offsets() for c in ax.collections])


def test_categorical_param_is_a_strip_per_choice(tmp_path):
    curves = _mixed(12)
    curves[4] = TrialCurve("p4", "pruned", [1], [0.123], curves[4].params)  # a cosine one
    fig = metric_vs_params(curves, "val_acc", {"lr"}, tmp_path / "mp.png", MIXED)
    ax = _panels(fig)["train.schedule"]
    assert [t.get_text() for t in ax.get_xticklabels()] == SCHEDULES
    assert list(ax.get_xticks()) == [0, 1, 2]
    assert len(ax.collections) == 2  # completed and pruned kept apart
    by_y = {c.last: SCHEDULES.index(c.params["train.schedule"]) for c in curves}
    xy = _points(ax)
    assert len(xy) == 12
    for x, y in xy:
        assert abs(x - by_y[_key(by_y, y)]) <= JITTER
    assert len({round(float(x), 6) for x, _ in xy}) > 3  # jittered, not stacked
    again = metric_vs_params(curves, "val_acc", {"lr"}, tmp_path / "mp2.png", MIXED)
    assert np.array_equal(_points(_panels(again)["train.schedule"]), xy)  # deterministic
    assert _panels(fig)["lr"].get_xscale() == "log"


def _key(by_y: dict[float, int], y: float) -> float:
    """The key of `by_y` equal to the drawn y (offsets are stored as float64)."""
    (key,) = [k for k in by_y if math.isclose(k, y, abs_tol=1e-9)]
    return key


def test_categorical_without_distribution_uses_first_seen_order_and_yaml_text(tmp_path):
    clips = [None, 1.0, None, 5.0, 1.0, None]
    flags = [True, False, False, True, True, False]
    curves = [TrialCurve(f"t{i}", "completed", [1], [0.1 * i + 0.05],
                         {"train.grad_clip": clip, "optimizer.amsgrad": flag})
              for i, (clip, flag) in enumerate(zip(clips, flags, strict=True))]
    assert varying_params(curves) == ["train.grad_clip", "optimizer.amsgrad"]
    fig = metric_vs_params(curves, "val_acc", set(), tmp_path / "mp.png")
    panels = _panels(fig)
    clip_ax, flag_ax = panels["train.grad_clip"], panels["optimizer.amsgrad"]
    assert [t.get_text() for t in clip_ax.get_xticklabels()] == ["null", "1", "5"]
    assert [t.get_text() for t in flag_ax.get_xticklabels()] == ["true", "false"]
    index = {None: 0, 1.0: 1, 5.0: 2}
    for x, y in _points(clip_ax):
        i = round((y - 0.05) / 0.1)
        assert abs(x - index[clips[i]]) <= JITTER
    for x, y in _points(flag_ax):
        assert abs(x - (0 if flags[round((y - 0.05) / 0.1)] else 1)) <= JITTER


def test_int_log_param_gets_a_log_axis(tmp_path):
    curves = _mixed(9)
    # log from its IntDistribution, with no name in log_params
    fig = metric_vs_params(curves, "val_acc", set(), tmp_path / "mp.png", MIXED)
    ax = _panels(fig)["train.batch_size"]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "train.batch_size (log)"
    xs = sorted(float(x) for x, _ in _points(ax))
    assert xs == sorted(float(c.params["train.batch_size"]) for c in curves)  # no jitter
    fig.canvas.draw()  # plain labels at powers of 2, not 2x10^1 on every minor tick
    lo, hi = ax.get_xlim()
    shown = [t.get_text() for t, v in zip(ax.get_xticklabels(), ax.get_xticks(), strict=True)
             if lo <= v <= hi]
    assert shown == [str(2 ** k) for k in range(4, 9) if lo <= 2 ** k <= hi]
    assert len(shown) >= 4
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
    # and from log_params alone, without distributions
    fig = metric_vs_params(curves, "val_acc", {"train.batch_size"}, tmp_path / "mp2.png")
    assert _panels(fig)["train.batch_size"].get_xscale() == "log"
    assert _panels(fig)["lr"].get_xscale() == "linear"


def test_conditional_param_is_drawn_from_the_trials_that_have_it(tmp_path):
    curves = _mixed(12) + [TrialCurve("f", "failed", [], [], {"train.schedule": "onecycle",
                                                               "train.warmup_fraction": 0.2})]
    fig = metric_vs_params(curves, "val_acc", {"lr"}, tmp_path / "mp.png", MIXED)
    panels = _panels(fig)
    assert list(panels) == ["lr", "train.schedule", "train.batch_size", "train.warmup_fraction"]
    having = [c for c in curves if "train.warmup_fraction" in c.params and c.last is not None]
    assert len(having) == 4
    warm = _points(panels["train.warmup_fraction"])
    assert sorted(warm[:, 0]) == pytest.approx(
        sorted(c.params["train.warmup_fraction"] for c in having))
    assert sorted(warm[:, 1]) == pytest.approx(sorted(c.last for c in having))
    for name in ("lr", "train.schedule", "train.batch_size"):
        assert len(_points(panels[name])) == 12
    _read_png(tmp_path / "mp.png")


@pytest.mark.parametrize("given", ["distributions", "inferred"])
def test_importances_rank_a_categorical_that_matters_first(given):
    curves = [TrialCurve(c.trial_id, c.outcome, c.epochs, c.values,
                         {k: v for k, v in c.params.items() if k != "train.warmup_fraction"})
              for c in _mixed(30)]
    dists = MIXED if given == "distributions" else {}
    found = importances(curves, "val_acc", "max", dists)
    assert set(found) == {"fanova", "ped_anova", "mean_decrease_impurity"}
    for shares in found.values():
        assert set(shares) == {"lr", "train.schedule", "train.batch_size"}
        assert sum(shares.values()) == pytest.approx(1.0)
    assert max(found["fanova"], key=found["fanova"].get) == "train.schedule"
    assert found["fanova"]["train.schedule"] > 0.7
    mdi = found["mean_decrease_impurity"]
    assert max(mdi, key=mdi.get) == "train.schedule"
    assert found["ped_anova"]["train.schedule"] > 0
    assert importance_line(found).startswith("importance (fanova): train.schedule ")


def test_importances_with_a_conditional_param(caplog):
    curves = _mixed(30)
    with caplog.at_level(logging.WARNING, logger="search.record.plots"):
        found = importances(curves, "val_acc", "max", MIXED)
    assert "left out" not in caplog.text  # every trial entered, with the params it has
    assert set(found) == {"fanova", "ped_anova", "mean_decrease_impurity"}
    everywhere = {"lr", "train.schedule", "train.batch_size"}
    # PED-ANOVA rates the conditional param; fANOVA and MDI rate the params every trial has,
    # fitted on all 30 trials, so the schedule still comes out on top
    assert set(found["ped_anova"]) == everywhere | {"train.warmup_fraction"}
    for name in ("fanova", "mean_decrease_impurity"):
        assert set(found[name]) == everywhere
        assert max(found[name], key=found[name].get) == "train.schedule"
    for shares in found.values():
        assert all(math.isfinite(v) and v >= 0 for v in shares.values())
        assert sum(shares.values()) == pytest.approx(1.0)


def test_draw_all_with_a_general_space(tmp_path):
    """End to end with categorical, int and conditional params and no distributions at all:
    nothing calls float() on a category, and the categorical param is rated."""
    curves = [TrialCurve(c.trial_id, c.outcome, c.epochs, c.values,
                         {**c.params, "optimizer.amsgrad": i % 2 == 0})
              for i, c in enumerate(_mixed(30))]
    curves[0] = TrialCurve("p0", "pruned", [1], [0.2], curves[0].params)
    plots = draw_all(curves, "val_acc", "max", "t29", {"lr", "train.batch_size"}, {}, tmp_path)
    assert set(plots.paths) == {"learning_curves", "metric_vs_params", "importances"}
    assert plots.importances["fanova"]["train.schedule"] > 0.5
    assert "train.warmup_fraction" in plots.importances["ped_anova"]
    assert "optimizer.amsgrad" in plots.importances["fanova"]
    for path in plots.paths.values():
        _read_png(path)


# --- what importances rest on (issue: statistics that say how much they rest on) ----------


def _asha(completed: int, pruned: int, epochs: int = 15) -> list[TrialCurve]:
    """A demo-like ASHA search: `completed` trials of `epochs` epochs, `pruned` stopped at
    epoch 1; the metric depends on lr."""
    rng = random.Random(3)
    out = []
    for i in range(completed + pruned):
        lr = 10 ** rng.uniform(-4, -1)
        quality = 1.0 - 0.1 * abs(math.log10(lr) + 2.5)
        n = epochs if i < completed else 1
        values = [quality * (1 - 0.5 ** e) for e in range(1, n + 1)]
        out.append(TrialCurve(f"t{i}", "completed" if i < completed else "pruned",
                              list(range(1, n + 1)), values,
                              {"lr": lr, "beta1": rng.uniform(0.8, 0.99)}))
    return out


def test_importances_rest_on_the_deepest_epoch_enough_trials_reached(tmp_path):
    from search.record.plots import MIN_IMPORTANCE_TRIALS, importance_basis

    assert MIN_IMPORTANCE_TRIALS == 8  # bench/RESULTS.md, python -m bench.importance_min
    demo = _asha(completed=2, pruned=6)  # make demo's shape: 2 of 8 trials completed
    basis = importance_basis(demo)
    assert (basis.epoch, basis.trials) == (1, 8)  # pruned trials count, valued at epoch 1
    assert all(c.epochs == [1] and c.outcome == "completed" for c in basis.curves)
    deep = _asha(completed=9, pruned=3)
    assert (importance_basis(deep).epoch, importance_basis(deep).trials) == (15, 9)
    assert importance_basis(_asha(completed=2, pruned=5)) is None
    failed = _asha(completed=2, pruned=6)
    failed[0] = TrialCurve("f", "failed", [1], [0.5], failed[0].params)
    assert importance_basis(failed) is None  # a failed trial's value is not a result

    plots = draw_all(demo, "val_acc", "max", "t0", {"lr"}, {}, tmp_path / "ok")
    line = plots.importance_line()
    assert line.startswith("importance (fanova, 8 trials at epoch 1): ")
    title = _suptitle(importance_chart(plots.importances, tmp_path / "i.png", plots.basis))
    assert "8 trials at epoch 1" in title

    few = draw_all(_asha(completed=2, pruned=5), "val_acc", "max", "t0", {"lr"}, {},
                   tmp_path / "few")
    assert few.importances == {} and "importances" not in few.paths
    assert few.importance_line() == ("too few trials for importances (2 completed; "
                                     "8 needed at one epoch)")


def _suptitle(fig) -> str:
    return fig._suptitle.get_text() if fig._suptitle else ""


def test_the_chart_shows_where_evaluators_disagree(tmp_path):
    agree = {"fanova": {"lr": 0.7, "eps": 0.3}, "ped_anova": {"lr": 0.6, "eps": 0.4}}
    split = {"fanova": {"lr": 0.7, "eps": 0.3}, "ped_anova": {"eps": 0.9, "lr": 0.1}}
    assert plots_module.disagreement(agree) == ""
    assert plots_module.disagreement(split) == "fanova ranks lr first, ped_anova ranks eps first"
    fig = importance_chart(split, tmp_path / "split.png")
    assert "evaluators disagree: fanova ranks lr first, ped_anova ranks eps first" in \
        _suptitle(fig)
    assert "disagree" not in _suptitle(importance_chart(agree, tmp_path / "agree.png"))
    # A parameter keeps its colour in every panel, so the swap shows.
    colour = {}
    for ax in [a for a in fig.axes if a.get_title()]:
        labels = [t.get_text() for t in ax.get_yticklabels()]
        for label, patch in zip(labels, ax.patches, strict=True):
            colour.setdefault(label, set()).add(tuple(patch.get_facecolor()))
    assert all(len(c) == 1 for c in colour.values()) and len(colour) == 2
    assert colour["lr"] != colour["eps"]
