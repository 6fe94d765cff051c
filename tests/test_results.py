"""What a finished search leaves behind (search/record/results.py): the parts not covered end
to end."""

from __future__ import annotations

import threading

from mlflow.utils import requirements_utils

from search.record import results


def test_mlflow_still_has_the_private_function_the_champion_preload_warms():
    # search.record.results.preload_model_logging calls it through getattr (a missing one only
    # costs time); this names it, so an MLflow release that drops it is noticed here.
    assert callable(getattr(requirements_utils, results.PACKAGES_MAP_INIT, None))


def test_the_preload_and_the_champion_export_never_trace_at_once():
    # torch.export is not thread-safe ("_EXPORT_MODULE_HIERARCHY must not be None" when two
    # exports overlap): the preload holds the same lock the champion's export takes.
    import torch

    errors = []

    def export_many() -> None:
        try:
            for _ in range(3):
                with results._model_logging:
                    torch.export.export(torch.nn.Linear(4, 2), (torch.zeros(2, 4),))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=results.preload_model_logging),
               threading.Thread(target=export_many)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
