"""A real `mlflow server` on 127.0.0.1, for the benchmarks and the tests.

One place starts it, waits for it and ends it:
- it runs in a process group of its own, and that whole group is killed when its start
  fails as well as when it is stopped: no uvicorn worker is left behind;
- MLflow 3's job runner is off (`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`): without it
  every server starts a job runner and eight `huey_consumer` processes (about ten Python
  processes a server on a 2-core machine) that a tracking store never uses;
- its start is waited for by what it answers (`/health`), not by a time tuned to a quiet
  machine: the deadline is one that a loaded 2-core machine meets, and a failed start says
  what was waited for and what the server printed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SECRET = "s3cret"
START_DEADLINE_S = 240.0  # seen: 3-8 s quiet, up to ~90 s beside a busy test suite
# The job runner (and its huey consumers) serves MLflow's GenAI jobs, not a tracking store.
QUIET_SERVER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether an HTTP GET of `url` gets an answer (any status) within `timeout`."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
        return True
    except OSError:
        return False


def kill_group(proc: subprocess.Popen) -> None:
    """Kill `proc` and everything in its process group (it was started in a session of its
    own), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class MlflowServer:
    """`mlflow server` on 127.0.0.1 over `backend` (SQLite in `folder` unless given),
    started at once; `stop()` and `start()` again to restart it on the same port."""

    def __init__(self, folder: Path, backend: str | None = None,
                 deadline_s: float = START_DEADLINE_S) -> None:
        self.folder, self.port = Path(folder), free_port()
        self.db = self.folder / "server.db"
        self.backend = backend or f"sqlite:///{self.db}"
        self.uri = f"http://127.0.0.1:{self.port}"
        self.secret_uri = f"http://alice:{SECRET}@127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.deadline_s = deadline_s
        self.start()

    def start(self) -> None:
        """Start the server and wait until it answers; on failure nothing is left running."""
        log = self.folder / "server.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                 str(self.port), "--workers", "1", "--backend-store-uri", self.backend,
                 "--artifacts-destination", str(self.folder / "artifacts")],
                cwd=self.folder, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **QUIET_SERVER}, start_new_session=True)
        deadline = time.monotonic() + self.deadline_s
        while not answers(f"{self.uri}/health"):
            ended = self.proc.poll() is not None
            if ended or time.monotonic() > deadline:
                self.stop()
                said = log.read_text(errors="replace")[-1500:]
                raise RuntimeError(
                    f"mlflow server on port {self.port} did not answer /health "
                    f"{'(it exited)' if ended else f'within {self.deadline_s:g} s'}; "
                    f"its log:\n{said}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Kill the server's whole process group (uvicorn and its workers)."""
        if self.proc is not None:
            kill_group(self.proc)

    def count(self, sql: str) -> int:
        """A count from the server's SQLite store (read while it writes)."""
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
                return db.execute(sql).fetchone()[0]
        except sqlite3.Error:  # a table not made yet, or the store being written
            return 0
