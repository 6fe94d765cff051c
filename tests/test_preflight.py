"""The driver's checks before Ray starts (search/preflight.py, and the Optuna storage's in
search/optuna_search.py): what they accept. What they refuse, as the command prints it, is
in test_bad_input.py and test_user_code.py."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search import preflight
from search.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig, TrialConfig
from search.optuna_search import check_storage
from search.trial.trainable import error_result
from search.trial.trainer import METRICS, train


def reports(lr: float) -> list[dict]:
    history: list[dict] = []
    cfg = TrialConfig(data=DataConfig(dataset="digits"), model=ModelConfig(name="mlp"),
                      optimizer=OptimizerConfig(lr=lr),
                      train=TrainConfig(epochs=2, batch_size=256, device="cpu"))
    train(cfg, lambda metrics, checkpoint: history.append(metrics))
    return history


def test_every_metric_search_metric_may_name_is_in_every_result_a_trial_reports():
    # Ray stops the search at the first result without search.metric: an epoch's, a
    # diverged epoch's, a failed trial's.
    results = [*reports(1e-3), *reports(1e12), error_result(1, ValueError("bad"))]
    assert any(r["diverged"] for r in results) and any("error" in r for r in results)
    for result in results:
        assert set(METRICS) <= set(result)
        assert all(isinstance(result[m], int | float) for m in METRICS)
    preflight.check_metric("val_loss")  # no error


@pytest.mark.parametrize("dataset", ["digits", "cifar100"])
def test_the_models_shipped_here_pass_the_forward_check(dataset):
    # download: true, so the files need not be here: a built-in dataset is not loaded.
    for name in ("cnn", "mlp", "resnet9", "resnet18"):  # not those other tests register
        cfg = TrialConfig(data=DataConfig(dataset=dataset, download=True),
                          model=ModelConfig(name=name))
        preflight.check(cfg)


def test_optuna_storages_that_work_pass_and_the_check_writes_nothing(tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    optuna.create_study(storage=f"sqlite:///{made / 'study.db'}", study_name="s")
    optuna.create_study(storage=JournalStorage(JournalFileBackend(str(made / "j.journal"))),
                        study_name="s")
    (made / "empty.journal").touch()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    for url in (f"sqlite:///{made / 'study.db'}",  # an Optuna database
                f"sqlite:///{tmp_path / 'new.db'}",  # made by the search
                "sqlite://",  # in memory
                str(made / "j.journal"),  # an Optuna journal
                str(made / "empty.journal"),
                str(tmp_path / "a" / "b" / "new.journal"),  # folders made by the search
                None):  # the search folder's journal
        check_storage(url)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
