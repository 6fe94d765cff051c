"""A search that learns from earlier ones (search/warm_start.py): the mapping between spaces,
the refusals, the history imported once, and a real search warm-started from the shared
finished search, whose own trials stay apart from the imported ones."""

from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from search import warm_start
from search.config import ConfigError, SearchConfig
from search.optuna_search import WARM_ATTR, OptunaSearch
from search.space import DefineByRun
from tests.conftest import run_module
from tests.test_search import children

SOURCE = {
    "space": {"lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
              "one_minus_beta2": {"value": 1.0e-3},
              "train.schedule": {"choices": ["constant", "cosine"]}},
    "search": {"metric": "val_acc", "mode": "max"},
}
HERE = {
    "space": {"lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
              "one_minus_beta2": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
              "train.schedule": {"value": "cosine"},
              "train.batch_size": {"choices": [64, 128]}},
    "search": {"metric": "val_acc", "mode": "max"},
}


def config(raw: dict, **search) -> SearchConfig:
    """A config with its warm-start history on (off by default) unless `search` says."""
    raw = {**raw, "search": {"warm_start_history": True, **raw["search"], **search}}
    return SearchConfig.model_validate(raw)


def source_trial(lr: float, schedule: str, value: float | None = 0.9,
                 state: TrialState = TrialState.COMPLETE, beta1: float = 0.9):
    return create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None,
        params={"lr": lr, "beta1": beta1, "eps": 1e-8, "train.schedule": schedule},
        distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True),
                       "beta1": FloatDistribution(0.8, 0.99),
                       "eps": FloatDistribution(1e-10, 1e-6, log=True),
                       "train.schedule": CategoricalDistribution(["constant", "cosine"])},
        intermediate_values={1: 0.5, 2: value if value is not None else 0.6})


def test_a_trial_maps_into_the_new_space_or_says_why_it_is_dropped():
    src, here = config(SOURCE), config(HERE)
    keys, order = here.space.keys(), DefineByRun(here.space).order
    params, dists = warm_start.mapped(source_trial(3e-3, "cosine"), src, keys, order)
    # lr kept; one_minus_beta2 was fixed there (1e-3) and is searched here; the batch size,
    # not in the source's space, is its config's (128); the fixed schedule matches.
    assert params == {"lr": 3e-3, "beta1": 0.9, "one_minus_beta2": 1e-3, "eps": 1e-8,
                      "train.batch_size": 128}
    assert dists["lr"] == FloatDistribution(1e-3, 1e-2, log=True)  # this space's, not theirs
    assert dists["one_minus_beta2"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert warm_start.mapped(source_trial(5e-4, "cosine"), src, keys, order) == (
        "lr outside this space")
    assert warm_start.mapped(source_trial(3e-3, "constant"), src, keys, order) == (
        "train.schedule is not 'cosine', the value this space fixes")


def write_source(folder, trials, name="first", **search):
    folder.mkdir(parents=True)
    cfg = config(SOURCE, **search).model_copy(update={"name": name})
    (folder / "search.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.add_trials(trials)
    return folder


def test_sources_are_read_ranked_imported_and_refused_before_ray(tmp_path):
    trials = [source_trial(3e-3, "cosine", 0.91), source_trial(4e-3, "cosine", 0.95),
              source_trial(2e-3, "cosine", None, state=TrialState.PRUNED),
              source_trial(5e-4, "cosine", 0.99),  # outside lr [1e-3, 1e-2]
              source_trial(3e-3, "constant", 0.97),  # not the fixed schedule
              create_trial(state=TrialState.FAIL, params={}, distributions={})]
    src = write_source(tmp_path / "runs" / "first", trials)
    here = config(HERE, warm_start=[str(src)], warm_start_top=2)
    warm = warm_start.load(here, tmp_path / "runs" / "second")
    assert warm.lines == [f"{src}: 5 finished trials, 3 kept, 2 dropped (1 lr outside "
                          "this space; 1 train.schedule is not 'cosine', the value this "
                          "space fixes)"]
    assert [p["lr"] for p in warm.top] == [4e-3, 3e-3]  # best completed first
    assert [t.state for t in warm.history] == [TrialState.COMPLETE, TrialState.COMPLETE,
                                               TrialState.PRUNED]
    assert all(t.user_attrs[WARM_ATTR] == str(src) for t in warm.history)
    assert warm.history[2].intermediate_values == {1: 0.5, 2: 0.6}
    # The history fits one study with this space's own trials (same distributions).
    study = optuna.create_study(direction="maximize")
    study.add_trials(warm.history)
    study.optimize(lambda t: DefineByRun(here.space)(t) and 0.5, n_trials=1)
    # By default (bench/RESULTS.md) only the top K carry over, and a line says so.
    plain = SearchConfig.model_validate({**HERE, "search": {**HERE["search"],
                                                            "warm_start": [str(src)]}})
    warm = warm_start.load(plain, tmp_path / "runs" / "second")
    assert [p["lr"] for p in warm.top] == [4e-3, 3e-3] and warm.history == []
    assert warm.lines[-1] == "history not given to the sampler (search.warm_start_history)"

    def refused(sources, match, **search):
        with pytest.raises(ConfigError, match=match):
            warm_start.load(config(HERE, warm_start=sources, **search),
                            tmp_path / "runs" / "second")

    refused([str(tmp_path / "nowhere")], r"search.warm_start .*nowhere: no search there")
    refused([str(src)], r"searched val_acc \(max\), this search val_loss \(min\)",
            metric="val_loss", mode="min")
    empty = write_source(tmp_path / "runs" / "empty", trials[-1:], name="empty")
    refused([str(empty)], "no finished trials")
    with pytest.raises(ConfigError, match="is this search itself"):
        warm_start.load(config(HERE, warm_start=[str(src)]), src)


def test_the_history_joins_the_study_once_and_only_as_imported(tmp_path):
    here = config(HERE)
    history = [create_trial(state=TrialState.COMPLETE, value=0.9, params={"lr": 3e-3},
                            distributions={"lr": FloatDistribution(1e-3, 1e-2, log=True)},
                            user_attrs={WARM_ATTR: "runs/first"})]

    def searcher():
        storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
        s = OptunaSearch(space=DefineByRun(here.space), metric="val_acc", mode="max",
                         max_epoch=2, history=history, storage=storage, study_name="second")
        s._setup_study("max")
        return s

    searcher()
    again = searcher()  # a search killed before Ray saved any state, started again
    trials = again._ot_study.get_trials()
    assert [t.user_attrs.get(WARM_ATTR) for t in trials] == ["runs/first"]


def test_a_search_warm_started_from_a_finished_one_runs_its_best_first(search, tmp_path):
    folder, _, _ = search  # the shared finished search: runs/e2e
    source = folder / "runs" / "e2e"
    (tmp_path / "conf.yaml").write_text(f"""
data: {{dataset: digits}}
model: {{name: mlp}}
train: {{epochs: 2}}
search: {{num_samples: 3, max_concurrent: 1, warm_start: [{source}], warm_start_top: 2,
         warm_start_history: true}}
scheduler: {{name: fifo}}
""")
    proc = run_module("search.run", "conf.yaml", "--name", "second", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ours = optuna.load_study(study_name="e2e", storage=JournalStorage(JournalFileBackend(
        str(source / "optuna.journal"))))
    done = [t for t in ours.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert f"warm start: {source}: {len(done)} finished trials, {len(done)} kept" in proc.stdout
    top = sorted((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: -t.value)

    from mlflow.tracking import MlflowClient

    parents, kids = children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "second")
    kids.sort(key=lambda r: r.info.start_time)
    assert len(kids) == 3  # MLflow holds this search's own trials only
    for kid, best in zip(kids, top[:2], strict=False):  # the source's best ran first
        assert float(kid.data.params["lr"]) == pytest.approx(best.params["lr"], rel=1e-2)
    assert parents[0].data.tags["warm_start.0"].startswith(str(source))
    assert parents[0].data.tags["best_trial_id"] in {k.data.tags["trial_id"] for k in kids}
    study = optuna.load_study(study_name="second", storage=JournalStorage(JournalFileBackend(
        str(tmp_path / "runs" / "second" / "optuna.journal"))))
    imported = [t for t in study.trials if WARM_ATTR in t.user_attrs]
    assert len(imported) == len(done) and len(study.trials) == len(done) + 3
    best = yaml.safe_load((tmp_path / "runs" / "second" / "best.yaml").read_text())
    assert best["model"]["name"] == "mlp"

    # --resume of the finished search imports nothing again.
    proc = run_module("search.run", "conf.yaml", "--name", "second", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "warm start:" not in proc.stdout
    study = optuna.load_study(study_name="second", storage=JournalStorage(JournalFileBackend(
        str(tmp_path / "runs" / "second" / "optuna.journal"))))
    assert sum(WARM_ATTR in t.user_attrs for t in study.trials) == len(done)


def test_a_study_and_an_experiment_give_what_the_search_folder_gives(search, tmp_path):
    """The shared search read three ways: its folder, its Optuna study alone (the config
    rides in the study), and its MLflow experiment (params as MLflow's text, 3 digits)."""
    folder, _, _ = search
    src = folder / "runs" / "e2e"
    raw = yaml.safe_load((src / "search.yaml").read_text())
    raw["search"].update(warm_start_top=3, warm_start_history=True)

    def loaded(source) -> warm_start.Warm:
        cfg = SearchConfig.model_validate(
            {**raw, "name": "second", "search": {**raw["search"], "warm_start": [source]}})
        return warm_start.load(cfg, tmp_path / "runs" / "second")

    by_folder = loaded(str(src))
    by_study = loaded({"optuna_storage": str(src / "optuna.journal"), "study": "e2e"})
    by_mlflow = loaded({"mlflow_experiment": "e2e",
                        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"})
    n = len(by_folder.history)
    assert n >= 6 and by_folder.lines == [f"{src}: {n} finished trials, {n} kept"]
    assert by_study.lines == [f"Optuna study e2e in {src / 'optuna.journal'}: {n} finished "
                              f"trials, {n} kept"]
    assert by_mlflow.lines[0].startswith(f"MLflow experiment e2e at sqlite:///{folder}")

    def key(t):
        return (t.state, t.value, sorted(t.intermediate_values.items()))

    assert sorted(map(key, by_study.history)) == sorted(map(key, by_folder.history))
    assert [t.params for t in by_study.history] == [t.params for t in by_folder.history]
    # MLflow: every epoch's value (Optuna's intermediate values stop before the last).
    theirs = list(by_mlflow.history)
    assert len(theirs) == n
    for t in by_folder.history:
        same = [o for o in theirs if (o.state, o.value) == (t.state, t.value)
                and t.intermediate_values.items() <= o.intermediate_values.items()
                and o.params.keys() == t.params.keys()
                and all(v == pytest.approx(t.params[k], rel=5e-3) for k, v in o.params.items())]
        assert same, t
        theirs.remove(same[0])
    completed = sum(t.state == TrialState.COMPLETE for t in by_folder.history)
    assert len(by_mlflow.top) == len(by_folder.top) == min(3, completed) > 0
    for a, b in zip(by_mlflow.top, by_folder.top, strict=True):
        assert a == pytest.approx(b, rel=5e-3)


def test_a_foreign_study_and_a_foreign_experiment_and_their_refusals(tmp_path):
    db = tmp_path / "theirs.db"
    study = optuna.create_study(study_name="theirs", storage=f"sqlite:///{db}",
                                direction="maximize")
    dist = FloatDistribution(1e-4, 1e-1, log=True)
    for lr, value in ((2e-3, 0.8), (6e-3, 0.9), (5e-2, 0.95)):
        study.add_trial(create_trial(value=value, params={"lr": lr},
                                     distributions={"lr": dist},
                                     intermediate_values={1: value / 2}))

    def load(*sources, **search):
        cfg = config(HERE, warm_start=list(sources), **search).model_copy(
            update={"name": "second"})
        return warm_start.load(cfg, tmp_path / "runs" / "second")

    source = {"optuna_storage": f"sqlite:///{db}", "study": "theirs"}
    warm = load(source)
    # Only lr was recorded there: what this space searches and they did not record (beta1,
    # the batch size, ...) drops the trial.
    assert warm.lines == [f"Optuna study theirs in sqlite:///{db}: 3 finished trials, 0 kept, "
                          "3 dropped (2 no value of beta1; 1 lr outside this space)"]
    # What this space fixes (the schedule, Adam's other keys) is taken as theirs.
    narrow = {**HERE, "space": {"lr": HERE["space"]["lr"], "train.schedule": {"value": "cosine"},
                                "beta1": {"value": 0.9}, "one_minus_beta2": {"value": 1.0e-3},
                                "eps": {"value": 1.0e-8}}}
    cfg = config(narrow, warm_start=[source], warm_start_top=1).model_copy(
        update={"name": "second"})
    warm = warm_start.load(cfg, tmp_path / "runs" / "second")
    assert [t.params for t in warm.history] == [{"lr": 2e-3}, {"lr": 6e-3}]
    assert warm.top == [{"lr": 6e-3}]

    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("theirs")
    for lr, acc in ((3e-3, 0.7), (4e-3, 0.75)):
        run = client.create_run(exp)
        client.log_param(run.info.run_id, "lr", str(lr))
        for step in (1, 2):
            client.log_metric(run.info.run_id, "val_acc", acc * step / 2, step=step)
        client.set_terminated(run.info.run_id)
    client.create_run(exp)  # still running: not a finished trial
    cfg = config(narrow, warm_start=[{"mlflow_experiment": "theirs", "tracking_uri": uri}])
    warm = warm_start.load(cfg.model_copy(update={"name": "second"}), tmp_path / "runs" / "x")
    assert sorted((t.params["lr"], t.value, t.intermediate_values[1]) for t in warm.history) \
        == [(3e-3, 0.7, 0.35), (4e-3, 0.75, 0.375)]
    del mlflow

    def refused(source, match, **search):
        with pytest.raises(ConfigError, match=match):
            load(source, **search)

    refused({"optuna_storage": f"sqlite:///{tmp_path / 'none.db'}", "study": "s"},
            "none.db does not exist")
    assert not (tmp_path / "none.db").exists()  # nothing written
    refused({**source, "study": "other"}, "its study 'other' is not in its storage")
    refused(source, r"searched an unnamed metric \(max\), this search val_loss \(min\)",
            metric="val_loss", mode="min")
    refused({"mlflow_experiment": "nobody", "tracking_uri": uri}, "no such experiment")
    refused({"mlflow_experiment": "theirs", "tracking_uri": uri}, "no finished trials",
            metric="val_loss")
    refused({"optuna_storage": str(tmp_path / "runs" / "second" / "optuna.journal"),
             "study": "second"}, "is this search itself")


def test_a_sources_credentials_are_not_saved_or_logged():
    from search.run import public

    cfg = config(HERE, warm_start=[
        {"optuna_storage": "postgresql://alice:s3cret@127.0.0.1/optuna", "study": "s"},
        {"mlflow_experiment": "e", "tracking_uri": "http://alice:s3cret@127.0.0.1:5000"}])
    saved = yaml.safe_dump(public(cfg))
    assert "s3cret" not in saved and "127.0.0.1/optuna" in saved
    assert "s3cret" not in warm_start.describe(cfg.search.warm_start[1])
