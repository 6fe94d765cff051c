"""bench/mlflow_server.py, which every test's `mlflow server` goes through: no job runner,
and nothing left running when its start fails or when it is stopped."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from bench.mlflow_server import MlflowServer, answers


def group(pgid: int) -> list[psutil.Process]:
    """The live processes of process group `pgid`."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def gone(pgid: int, within_s: float = 30) -> bool:
    """Whether group `pgid` is empty within `within_s` (its killed workers are not this
    process's children: reaping them takes a moment)."""
    deadline = time.monotonic() + within_s
    while group(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return group(pgid) == []


def test_a_server_runs_without_mlflows_job_runner_and_stops_whole(tmp_path):
    server = MlflowServer(tmp_path)
    try:
        assert answers(f"{server.uri}/health")
        running = group(server.proc.pid)
        assert running  # uvicorn and its worker
        commands = [" ".join(p.cmdline()) for p in running]
        assert not any("huey" in c or "_job_runner" in c for c in commands), commands
    finally:
        server.stop()
    assert gone(server.proc.pid)


def test_a_server_that_cannot_start_says_why_and_leaves_nothing_running(tmp_path):
    with pytest.raises(RuntimeError, match=r"did not answer /health \(it exited\)") as e:
        MlflowServer(tmp_path, backend="nosuchstore://nowhere")
    assert "its log:" in str(e.value)
    assert not running_in(tmp_path)


def test_a_server_too_slow_to_answer_is_ended_whole(tmp_path):
    # The deadline passes while the server still starts (a loaded machine): it is killed
    # with its whole process group, not left behind.
    with pytest.raises(RuntimeError, match=r"did not answer /health within 0.5 s"):
        MlflowServer(tmp_path, deadline_s=0.5)
    deadline = time.monotonic() + 30
    while running_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running_in(tmp_path)


def running_in(folder) -> list[str]:
    """The live processes whose command line names `folder` (a server's store is there)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        command = " ".join(proc.info["cmdline"] or [])
        if str(folder) in command and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(command)
    return found
