"""Shared test helpers."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Every process the suite starts inherits this variable, set to the pytest process's pid
# (each xdist worker its own): at the end, `nothing_left_running` finds them by it.
OWNER = "ADAMSEARCH_TEST_OWNER"
# How long the processes of a stopped Ray (`ray.shutdown(wait_for_processes=False)`) or a
# killed server may take to go, on a loaded machine.
LEFTOVER_GRACE_S = 90.0
RAY_START_DEADLINE_S = 240.0  # `ray start --head`: about 4 s quiet


# The environment of a driver that a test kills: it starts a Ray of its own, which the kill
# takes down with it, as before the shared Ray. (A driver killed while joined to a Ray that
# outlives it leaves its trial processes running until Ray ends its job; seen once to leave
# MLflow two epochs behind Ray's record of a resumed trial: not covered here.)
KILLED_WITH_ITS_RAY = {"RAY_ADDRESS": "local"}


def pytest_configure(config):
    os.environ[OWNER] = str(os.getpid())
    # A search with no address joins a Ray that runs on this machine (ray_current_cluster):
    # under xdist another worker's test cluster. Tests that mean to join one say its address.
    os.environ["RAY_ADDRESS"] = "local"
    # Ray 2.60 protects every cluster with a token (~/.ray/auth_token); a driver joining one
    # it did not start says so. Read when Ray is imported: set before any test imports it.
    os.environ["RAY_AUTH_MODE"] = "token"


# Under xdist (`make test`: two workers, `--dist loadscope`) a module's tests run in one
# worker, so that a module-scoped fixture (a search, a server) is made once. The modules
# that read the one shared search (`search` below) run in one worker together, so that it
# is made once.
SHARED_SEARCH_MODULES = {"test_search", "test_search_view", "test_deploy", "test_browser",
                         "test_warm_start"}
# The groups that take longest (seconds on one worker, measured 2026-12-08 on 2 cores) go
# to the workers first, so that no long group starts last while the other worker idles.
LONGEST_FIRST = ("shared-search", "test_task_search", "test_user_code", "test_reliability",
                 "test_adam_fused", "test_multiworker", "test_multiworker_cluster",
                 "test_pbt_search", "test_resume_fuzz", "test_full_disk", "test_space_search",
                 "test_promotion", "test_lifecycle", "test_warm")


def group_of(nodeid: str) -> str:
    """The xdist scope of a test: its module, or "shared-search"."""
    module = nodeid.split("::")[0].rpartition("/")[2].removesuffix(".py")
    return "shared-search" if module in SHARED_SEARCH_MODULES else module


def pytest_collection_modifyitems(config, items):
    rank = {group: i for i, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(group_of(item.nodeid), len(rank)))  # stable


@pytest.hookimpl(optionalhook=True)  # xdist's hook: pytest without xdist runs one process
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope`, with the shared search's readers as one scope (xdist's own
    `loadgroup` marks do not reach pytest 9's node ids)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ByGroup(config, log)


def marked(mark: str) -> list:
    """The live processes whose OWNER is `mark` or below it (`mark.N`), this one excluded."""
    import psutil

    exact, below = f"{OWNER}={mark}".encode(), f"{OWNER}={mark}.".encode()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            if (any(v == exact or v.startswith(below) for v in env)
                    and proc.status() != psutil.STATUS_ZOMBIE):
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def kill(procs: list) -> list[str]:
    """Kill `procs`; what each was, for a message."""
    import psutil

    said = []
    for proc in procs:
        try:
            said.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
            proc.kill()
        except psutil.Error:
            continue
    return said


_tests = itertools.count(1)


@pytest.fixture(autouse=True)
def ends_what_it_starts():
    """Whatever a test started (a driver, a server, a cluster's node, a Ray it left
    stopping) is ended after it, even when the test failed before it could end it: its
    processes carry the test's own OWNER mark. Module and session fixtures' processes
    carry the session's, and are checked at the end (`nothing_left_running`)."""
    session = os.environ[OWNER]
    os.environ[OWNER] = f"{session}.{next(_tests)}"
    ray_before = ray_connected()
    try:
        yield
    finally:
        mark, os.environ[OWNER] = os.environ[OWNER], session
        if ray_connected() and not ray_before:  # a Ray the test started in this process
            sys.modules["ray"].shutdown()
        kill(marked(mark))


def ray_connected() -> bool:
    """Whether this process is connected to a Ray (without importing Ray)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(scope="session", autouse=True)
def shared_ray(nothing_left_running, tmp_path_factory):
    """One Ray (2 CPUs) per test process, that every search started without an address
    joins, as a search joins a Ray kept up on this machine (README, "Many searches on one
    machine"): a search's Ray start and stop (about 5 s) is paid once, not per search.
    Each search is still its own Ray job with its own trial processes. Tests that mean a
    Ray of their own say so (`ray.init(address="local")`, a `Cluster`, `--address`)."""
    import fcntl
    import re
    import shutil
    import signal
    import tempfile

    from bench.mlflow_server import free_port

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Two xdist workers start theirs at once: the first start writes Ray's token file
    # (~/.ray/auth_token), which the second must then read, not write again.
    log = tmp_path_factory.mktemp("shared-ray") / "ray-start.log"
    # Its own temp folder (short: Ray's socket paths are in it): a `ray.init()` elsewhere on
    # this machine (a `make demo` beside the suite) must not find and join it.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    with open(tmp_path_factory.getbasetemp().parent / "ray-start.lock", "w") as lock, \
            log.open("w") as out:
        fcntl.flock(lock, fcntl.LOCK_EX)
        head = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--port",
             str(free_port()), "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", temp,
             "--include-dashboard=false", "--disable-usage-stats"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)  # its processes stay in this group: killed as one
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=RAY_START_DEADLINE_S)
    said = log.read_text(errors="replace")
    address = re.search(r"--address='([^']+)'", said)
    if head.returncode != 0 or address is None:
        os.killpg(head.pid, signal.SIGKILL)
        pytest.fail(f"ray start --head did not start a Ray within {RAY_START_DEADLINE_S:.0f} s:"
                    f"\n{said[-2000:]}", pytrace=False)
    os.environ["RAY_ADDRESS"] = address.group(1)
    yield address.group(1)
    os.environ["RAY_ADDRESS"] = "local"
    os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def own_ray(shared_ray):
    """For a module whose Ray must be its own (Ray Serve's detached actors outlive the
    job that started them): searches and `ray.init()` start a local Ray, as without a
    shared one."""
    os.environ["RAY_ADDRESS"] = "local"
    yield
    os.environ["RAY_ADDRESS"] = shared_ray


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running():
    """After the last test: every server, cluster and process group that a fixture started
    has ended (those still there after LEFTOVER_GRACE_S are named, killed, and fail the run)."""
    yield
    mine = str(os.getpid())
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := marked(mine)) and time.monotonic() < deadline:
        time.sleep(1)
    if left:
        said = kill(left)
        pytest.fail(f"{len(left)} processes started by the tests still ran at the end:\n"
                    + "\n".join(said), pytrace=False)


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: float = 900,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args...` as a user would, capturing its output."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def write_yaml(tmp_path):
    """Write a YAML text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "conf.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


# One real search of 8 trials with ASHA, shared by the tests that read what a finished
# search leaves behind (test_search.py) and by those that deploy its champion.
SEARCH = """
data: {dataset: digits, val_fraction: 0.2}
model: {name: cnn}
train: {epochs: 6, batch_size: 64}
search: {num_samples: 8, max_concurrent: 2, seed: 0, n_startup_trials: 3}
scheduler: {name: asha, grace_period: 1, reduction_factor: 3}
mlflow: {register_as: digits-test}
"""


@pytest.fixture(scope="session")
def search(tmp_path_factory):
    """(folder, stdout, MlflowClient) of the shared search `e2e`, run in `folder`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    cwd = tmp_path_factory.mktemp("search")
    (cwd / "conf.yaml").write_text(SEARCH)
    proc = run_module("search.run", "conf.yaml", "--name", "e2e", cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlflow.db'}")
    return cwd, proc.stdout, MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")


@pytest.fixture(scope="module")
def local_ray():
    """This process connected to the shared Ray for this module's in-process runs, unless
    it is connected already."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(logging_level="error")
    yield
    if started:
        ray.shutdown()

