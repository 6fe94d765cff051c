"""Connecting to Ray, and refusing trials no node can ever run.

A trial that asks for more than any node has waits in PENDING forever (ray #28292);
here that is an error before the search starts.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

import ray

import models
import optim
import search
from search.config import ConfigError, DataConfig, ResourcesConfig
from search.trial import warm
from search.trial.distributed import placement

CONNECT_TIMEOUT_S = 5.0


def _reachable(address: str) -> bool:
    """Whether host:port (or ray://host:port) accepts a TCP connection, quickly."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return True  # not host:port; let Ray judge it
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


# Ray's C++ failure signal handler prints a stack dump ("*** SIGTERM received ... PC: @ ...")
# when a worker process is terminated while it still warms up: the setup hook (`preload`)
# runs before Ray sets the worker's own SIGTERM handler, and Ray ends such workers when a
# multi-worker trial stops. Read as a crash. Without it a real crash still shows, through
# the faulthandler Ray enables in every worker (SIGSEGV, SIGABRT, ...; not SIGTERM).
QUIET_ENDS = {"RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}


def warm_workers(preload: DataConfig | None, verbose: bool = False) -> dict:
    """The runtime_env part that warms worker processes as they start
    (search/trial/trainable.py `preload`; what it keeps: search/trial/warm.py), and,
    unless `verbose`, ends them without a stack dump (QUIET_ENDS)."""
    env = {"worker_process_setup_hook": "search.trial.trainable.preload"}
    env_vars = {**(QUIET_ENDS if not verbose else {}),
                **({warm.PRELOAD_ENV: preload.model_dump_json()} if preload else {})}
    if env_vars:
        env["env_vars"] = env_vars
    return env


def connect(address: str | None, cpus: int | None = None,
            preload: DataConfig | None = None, ship: list[str] = (),
            verbose: bool = False) -> None:
    """Start Ray here (address None) or join a cluster, shipping the project's code.

    `py_modules` in Ray's runtime_env uploads `ship` (the user's plug-in code, folders or
    single modules) to every worker, and on a cluster search/, models/ and optim/ too:
    nothing is copied by hand. Worker processes import the trainer and load `preload`
    (the search's data) as they start, while the driver is still setting up.
    """
    if address not in (None, "auto") and not _reachable(address):
        raise ConfigError(f"ray.address {address!r}: nothing answers there (is the head up?)")
    if ray.is_initialized():  # already connected (tests share one Ray)
        return
    if address is None:
        # Ray announces its (default, kept) token auth on every local start: noise here.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR)
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="warning",
                 runtime_env={**warm_workers(preload, verbose),
                              **({"py_modules": list(ship)} if ship else {})})
        return
    modules = [str(Path(m.__file__).parent) for m in (search, models, optim)] + list(ship)
    # Under `ray job submit` the job's own runtime_env (--working-dir) ships the code;
    # replacing it would let Ray delete the job's working directory under the driver.
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    if in_job:
        # Ray may delete the job's unpacked working directory while the driver still sits
        # in it (seen with Ray 2.60); paths are resolved by now, so step out of it.
        os.chdir(tempfile.gettempdir())
    try:
        ray.init(address=address, logging_level="warning",
                 runtime_env=None if in_job else {"py_modules": modules,
                                                  **warm_workers(preload, verbose)})
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"ray.address {address!r}: cannot join: {str(e).splitlines()[0]}") \
            from None


def disconnect() -> None:
    """Leave Ray; a Ray this process started is stopped, without waiting for its
    processes to exit (they go on their own; waiting costs about 2 s)."""
    ray.shutdown(wait_for_processes=False)


def check_local_resources(resources: ResourcesConfig) -> None:
    """Before Ray starts here: fail if a trial's workers cannot fit on this machine (Ray
    will count at most os.cpu_count() CPUs and the GPUs torch sees)."""
    if resources.distributed:
        import torch

        placement.concurrent_trials(
            [{"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}],
            resources)


def check_resources(resources: ResourcesConfig) -> int | None:
    """Fail if no alive node can host one trial (a GPU trial on a GPU-less cluster, say),
    or a multi-worker trial's workers cannot all be placed. Returns how many multi-worker
    trials fit at once (Tune does not count their workers), None for one-worker trials."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if resources.distributed:
        return placement.concurrent_trials(nodes, resources)
    for key, field, asked in (
        ("GPU", "gpus_per_trial", resources.gpus_per_trial),
        ("CPU", "cpus_per_trial", resources.cpus_per_trial),
    ):
        most = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if asked > most:
            raise ConfigError(
                f"resources.{field} {asked:g}: no node has that many {key}s "
                f"(the most on any node is {most:g}), so no trial could ever start"
            )
