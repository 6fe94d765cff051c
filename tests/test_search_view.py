"""What a person sees of the shared finished search: its plots, the Optuna study (with
optuna.load_study and optuna-dashboard), and MLflow runs that read well."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray.tune import ExperimentAnalysis, ResultGrid

from bench.mlflow_server import START_DEADLINE_S, free_port
from search import config as config_
from search.config import SearchConfig
from search.record import plots, results
from tests.test_search import children

STATES = {"completed": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL", "diverged": "COMPLETE"}


def parent_and_kids(search):
    cwd, _, client = search
    parents, kids = children(client, "e2e")
    return cwd, client, parents[0], kids


def test_the_plots_are_the_pictures_of_these_trials(search, tmp_path):
    cwd, client, parent, kids = parent_and_kids(search)
    logged = Path(client.download_artifacts(parent.info.run_id, "plots", tmp_path))
    assert {p.name for p in logged.iterdir()} == {
        "learning_curves.png", "metric_vs_params.png", "importances.png"}
    for png in logged.iterdir():
        image = matplotlib.image.imread(png)
        assert image.shape[1] in (800, 1200) and image.shape[0] >= 300, png.name
        assert image[..., :3].std() > 0.05, f"{png.name} is blank"
    assert matplotlib.image.imread(logged / "learning_curves.png").shape[:2] == (500, 800)
    # Drawn again from Ray's own record of the trials: as many curves as trials, and the
    # very picture the search logged.
    cfg = config_.load(cwd / "runs" / "e2e" / "search.yaml")
    rows = results.summarize(ResultGrid(ExperimentAnalysis(str(cwd / "runs" / "e2e"))), cfg)
    curves = results.curves(rows, "val_acc")
    figure = plots.learning_curves(curves, "val_acc", "max", rows[0].trial_id,
                                   tmp_path / "again.png")
    drawn = [line.get_gid() for line in figure.axes[0].get_lines() if line.get_gid()]
    assert sorted(drawn) == sorted(k.data.tags["trial_id"] for k in kids)  # 8 curves
    for curve in curves:  # each curve is its trial's MLflow history
        kid = next(k for k in kids if k.data.tags["trial_id"] == curve.trial_id)
        history = client.get_metric_history(kid.info.run_id, "val_acc")
        assert curve.epochs == sorted(m.step for m in history)
    np.testing.assert_array_equal(matplotlib.image.imread(tmp_path / "again.png"),
                                  matplotlib.image.imread(logged / "learning_curves.png"))


def test_importances_are_metrics_of_the_search_and_a_line_of_its_summary(search):
    _, stdout, _ = search
    _, _, parent, _ = parent_and_kids(search)
    fanova = {k.split(".")[2]: v for k, v in parent.data.metrics.items()
              if k.startswith("importance.fanova.")}
    assert set(fanova) == {"lr", "beta1", "beta2", "eps"}
    assert sum(fanova.values()) == pytest.approx(1.0, abs=1e-6)
    # 8 trials reached epoch 1 (issue 24: the line says what the importances rest on)
    line = next(x for x in stdout.splitlines() if x.startswith("importance (fanova, "))
    assert " trials at epoch " in line.split(": ")[0]
    top = max(fanova, key=fanova.get)
    assert line.split(": ")[1].startswith(f"{top} {fanova[top]:.2f}")


def journal(cwd: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(cwd / "runs" / "e2e" / "optuna.journal")))


def test_the_optuna_study_has_one_trial_per_ray_trial_in_its_state(search):
    cwd, _, _, kids = parent_and_kids(search)
    study = optuna.load_study(study_name="e2e", storage=journal(cwd))
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert set(by_ray) == {k.data.tags["trial_id"] for k in kids}
    for kid in kids:
        trial = by_ray[kid.data.tags["trial_id"]]
        assert trial.state.name == STATES[kid.data.tags["outcome"]]
        assert trial.params["lr"] == pytest.approx(float(kid.data.params["lr"]), rel=5e-3)


def test_optuna_dashboard_answers_on_loopback_with_the_study(search):
    cwd, _, _, kids = parent_and_kids(search)
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("optuna-dashboard")),
         str(cwd / "runs" / "e2e" / "optuna.journal"), "--host", "127.0.0.1", "--port",
         str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, studies = time.monotonic() + START_DEADLINE_S, None
        while studies is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies, f"optuna-dashboard did not answer /api/studies in {START_DEADLINE_S} s"
        assert studies[0]["study_name"] == "e2e"
        with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}", timeout=30) as r:
            trials = json.loads(r.read())["trials"]
        assert len(trials) == len(kids)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_trial_runs_read_well_names_tags_ranks_and_the_champion(search):
    _, client, parent, kids = parent_and_kids(search)
    ranks = sorted(int(k.data.tags["rank"]) for k in kids)
    assert ranks == list(range(1, len(kids) + 1))
    best = next(k for k in kids if k.data.tags["rank"] == "1")
    assert best.data.tags["trial_id"] == parent.data.tags["best_trial_id"]
    assert [k for k in kids if k.data.tags.get("champion")] == [best]
    champion = client.get_model_version_by_alias("digits-test", "champion")
    assert champion.run_id == best.info.run_id
    assert f"Best trial `{best.data.tags['trial_id']}`" in champion.description
    for kid in kids:
        trial_id = kid.data.tags["trial_id"]
        assert kid.info.run_name.startswith(f"{trial_id} lr=")  # id and sampled values
        assert "e-" in kid.info.run_name  # eps keeps its exponent
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "val_acc")]
        if kid.data.tags["outcome"] == "pruned":
            assert kid.data.tags["pruned_at_epoch"] == str(max(steps))
        else:
            assert "pruned_at_epoch" not in kid.data.tags
        assert len(kid.data.params["eps"]) <= 9  # short: the table cell keeps the exponent
    # The champion's run ended when its training did, not when its model was logged.
    last = max(m.timestamp for m in client.get_metric_history(best.info.run_id, "val_acc"))
    assert best.info.end_time - last < 3000


def test_the_parent_says_what_was_searched_and_who_won_why(search, tmp_path):
    cwd, client, parent, _ = parent_and_kids(search)
    assert not any(k.startswith(("optimizer.lr", "data.root", "mlflow.")) for k in
                   parent.data.params)
    assert parent.data.params["search.sampler"] == "random (seed 0)"  # the default sampler
    note = parent.data.tags["mlflow.note.content"]
    best_id = parent.data.tags["best_trial_id"]
    assert f"**Best**: trial `{best_id}`" in note
    assert "ties go to the lower val_loss, then the trial started first" in note
    assert f"python -m search.train {cwd / 'runs' / 'e2e' / 'best.yaml'}" in note
    assert "`models:/digits-test@champion`" in note
    assert note.count("\n| ") >= 9  # a header and 8 trials
    config = Path(client.download_artifacts(parent.info.run_id, "config.yaml", tmp_path))
    assert SearchConfig.model_validate(yaml.safe_load(config.read_text())).name == "e2e"
    top = json.loads(Path(client.download_artifacts(parent.info.run_id, "top_trials.json",
                                                    tmp_path)).read_text())
    first = dict(zip(top["columns"], top["data"][0], strict=True))
    best_yaml = config_.load(cwd / "runs" / "e2e" / "best.yaml", schema=config_.TrialConfig)
    assert first["eps"] == best_yaml.optimizer.eps  # full precision, not rounded


def test_the_summary_links_to_the_training_view(search):
    _, stdout, client = search
    experiment = client.get_experiment_by_name("e2e").experiment_id
    assert (f"http://127.0.0.1:5000/#/experiments/{experiment}/runs"
            "?workflowType=machine_learning") in stdout


def result(trial_id: str, acc: float, loss: float, epoch: int = 6):
    return SimpleNamespace(metrics={"val_acc": acc, "val_loss": loss, "epoch": epoch,
                                    "trial_id": trial_id},
                           error=None, path=f"/x/trial_{trial_id}", config={"lr": 0.01})


def test_ties_on_the_metric_go_to_the_lower_val_loss_then_to_the_first_started():
    cfg = SearchConfig(train={"epochs": 6})
    grid = [result("a", 0.98, 0.09), result("b", 0.99, 0.07), result("c", 0.99, 0.05),
            result("d", 0.99, 0.05), result("e", 0.995, 0.3, epoch=2)]
    assert [r.trial_id for r in results.summarize(grid, cfg)] == ["c", "d", "b", "a", "e"]
    loss = SearchConfig(train={"epochs": 6}, search={"metric": "val_loss", "mode": "min"})
    grid = [result("a", 0.97, 0.05), result("b", 0.99, 0.05)]
    assert [r.trial_id for r in results.summarize(grid, loss)] == ["b", "a"]
