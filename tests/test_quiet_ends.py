"""Quiet ends: a worker process that Ray terminates while it warms up (as it does when a
multi-worker trial stops) prints no `*** SIGTERM received ... PC: @` stack dump unless
--verbose, and a worker that really crashes still shows its stack (search/cluster.py
QUIET_ENDS). The dump came from Ray's C++ failure signal handler, which is the SIGTERM
handler until the worker's setup hook (search/trial/trainable.py `preload`) has run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# The workers are found as the driver's children: a Ray the driver starts itself.
pytestmark = pytest.mark.usefixtures("own_ray")

SCRIPT = """
import os, signal, sys, time
import psutil
import ray
from search import cluster
from search.config import DataConfig

cluster.connect(None, cpus=2, preload=DataConfig(dataset="digits"),
                verbose=sys.argv[1] == "verbose")


@ray.remote(num_cpus=0)
class Worker:
    def crash(self):
        os.kill(os.getpid(), signal.SIGSEGV)


# Ray terminates a worker process that is still warming up (running the setup hook that
# imports torch and loads the data) when its trial or job ends: SIGTERM, before the worker
# has set its own handler for it.
def warming():
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if (p.name().startswith("ray::IDLE")  # a worker with no task yet
                    and any("libtorch" in m.path for m in p.memory_maps())):
                found.append(p)
        except psutil.Error:
            pass
    return found


actors = [Worker.remote() for _ in range(2)]  # makes Ray start workers
end = time.monotonic() + 90
while not warming() and time.monotonic() < end:
    time.sleep(0.05)
for p in warming():
    p.send_signal(signal.SIGTERM)
crashed = Worker.remote()
try:
    ray.get(crashed.crash.remote(), timeout=90)
except Exception:
    pass
time.sleep(3)  # Ray's log monitor forwards the workers' lines to this driver
cluster.disconnect()
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("quiet") / "workers.py"
    path.write_text(SCRIPT)
    return path


def run(script, mode: str) -> str:
    done = subprocess.run([sys.executable, str(script), mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_a_terminated_worker_prints_no_stack_dump_and_a_crash_still_shows(script):
    out = run(script, "quiet")
    assert "SIGTERM received" not in out
    assert "PC: @" not in out
    assert "Segmentation fault" in out  # faulthandler's "Fatal Python error: Segmentation fault"


def test_with_verbose_the_dump_is_shown(script):
    assert "SIGTERM received" in run(script, "verbose")
