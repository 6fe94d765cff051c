"""A driver killed at a few fixed points of a real search, and resumed: MLflow must equal
Ray's stored record afterwards, and no password may be left anywhere (bench/resume_fuzz.py
has the longer run, over more seeds and kill points)."""

from __future__ import annotations

import pytest

from bench import resume_fuzz
from bench.mlflow_server import MlflowServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("fuzz"))
    yield s
    s.stop()


# After every trial ended (MLflow behind Ray's snapshot, and no step of Ray's loop runs on
# resume). Early, between snapshots with trials running (MLflow ahead of Ray's snapshot: the
# old code's failure): tests/test_search.py's killed driver, checked the same way.
# bench/resume_fuzz.py runs these and the others (start, epochs:K, champion, ...).
@pytest.mark.parametrize("point", ["end"])
def test_a_driver_killed_and_resumed_leaves_mlflow_equal_to_rays_record(server, point):
    what, out = resume_fuzz.kill_and_resume(server.folder, server, seed=1, point=point)
    assert what == "killed", out[-2000:]
    assert resume_fuzz.SECRET not in out
    assert resume_fuzz.check(server.folder, server, f"s1-{point.replace(':', '')}") == []
