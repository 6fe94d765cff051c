"""The search's live output (search/record/progress.py)."""

from __future__ import annotations

import logging

import pytest

from search.record.progress import fmt, sample_line, setup_logging


@pytest.mark.parametrize("value, shown", [
    (0.00506, "0.00506"), (2.231e-10, "2.23e-10"), (1e-8, "1e-08"), (0.999837, "0.999837"),
    (0.9, "0.9"), (0.0, "0"), (0.12260605, "0.123"), (1.5, "1.5"),
])
def test_values_keep_their_magnitude(value, shown):
    assert fmt(value) == shown


def test_a_sample_reads_in_the_papers_order():
    line = sample_line({"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8})
    assert line == "lr=0.001 beta1=0.9 beta2=0.999 eps=1e-08"


def test_search_warnings_still_print_after_mlflow_silences_the_root_logger(capsys):
    setup_logging(verbose=False)
    import mlflow.pytorch  # noqa: F401  (MLflow 3.17: logging.basicConfig(level=ERROR))

    logging.basicConfig(level=logging.ERROR)  # whichever import did it first
    logging.getLogger("search.record.tracking").warning("MLflow unreachable, 3 writes queued")
    assert "MLflow unreachable, 3 writes queued" in capsys.readouterr().out
