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


# Early, between snapshots, trials running (MLflow ahead of Ray's snapshot: the old code's
# failure); and after every trial ended (MLflow behind it, and no step of Ray's loop runs
# on resume). bench/resume_fuzz.py runs these and the others (start, champion, ...).
@pytest.mark.parametrize("point", ["epochs:3", "end"])
def test_a_driver_killed_and_resumed_leaves_mlflow_equal_to_rays_record(server, point):
    what, out = resume_fuzz.kill_and_resume(server.folder, server, seed=1, point=point)
    assert what == "killed", out[-2000:]
    assert resume_fuzz.SECRET not in out
    assert resume_fuzz.check(server.folder, server, f"s1-{point.replace(':', '')}") == []
