"""Warm trial processes: what a reused Ray worker keeps between trials, and what it drops.

With `TuneConfig(reuse_actors=True)` one worker process runs trial after trial, so the
imports, the dataset and the device context are paid once per process, not once per trial.
Kept: the loaded dataset, already on the trial's device, keyed by its config (a few MB for
digits or CIFAR-10; two configs at most), and likewise a `train.task` of the user's, built.
Dropped after every trial (`release`): the trial's objects (model, optimizer state,
gradients), torch.compile's caches (compiled graphs hold on to memory and would serve a
later trial's different model), and the CUDA caching allocator's blocks. A trial seeds
every generator it uses (`search.trial.trainer`), so no random state carries over either.

`search.trial.trainable.preload`, Ray's `worker_process_setup_hook`, fills what is kept here
when a worker process starts, before any trial is placed on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import math
import sys
from collections import OrderedDict

import torch

from search.config import DataConfig, TrialConfig
from search.trial import data
from search.trial import task as task_
from search.trial.image_task import ImageClassification

PRELOAD_ENV = "ADAMSEARCH_PRELOAD_DATA"  # a DataConfig as JSON, set by the driver
_CACHE_SIZE = 2  # datasets kept per process and device (a search uses one)
_datasets: OrderedDict[tuple[str, str], data.Dataset] = OrderedDict()  # (config, device)
_tasks: OrderedDict[tuple[str, str, str], task_.Task] = OrderedDict()  # (task, kwargs, device)


def dataset(cfg: DataConfig, device: torch.device) -> data.Dataset:
    """`data.load(cfg)` with both splits on `device`, loaded once per process."""
    config = cfg.model_dump_json()
    key, host_key = (config, str(device)), (config, "cpu")
    if key not in _datasets:
        host = _datasets[host_key] if host_key in _datasets else data.load(cfg)
        _datasets[host_key] = host
        _datasets[key] = host.to(device)
    _datasets.move_to_end(key)
    while len(_datasets) > _CACHE_SIZE:
        _datasets.popitem(last=False)
    return _datasets[key]


def task(cfg: TrialConfig, device: torch.device) -> task_.Task:
    """The config's task on `device`: image classification over the dataset kept here, or
    the user's `train.task`, built once per process and kept (the newest two) for the next
    trials with the same task and arguments: a task holds its data, not a trial's state."""
    if cfg.train.task is None:
        return ImageClassification(cfg, device, dataset(cfg.data, device))
    key = (cfg.train.task, json.dumps(cfg.train.task_kwargs, sort_keys=True, default=str),
           str(device))
    if key not in _tasks:
        _tasks[key] = task_.build(cfg, device)
    _tasks.move_to_end(key)
    while len(_tasks) > _CACHE_SIZE:
        _tasks.popitem(last=False)
    return _tasks[key]


def use_assigned_cpus(cpus: float) -> None:
    """Compute with as many threads as the trial has CPUs (at least one).

    Ray sets OMP_NUM_THREADS when a task starts, but a warm process imported torch before
    that (in `preload`), so torch would use every core of the machine: two trials on two
    cores then run at half speed each.
    """
    torch.set_num_threads(max(1, math.floor(cpus)))


def release(compiled: bool) -> None:
    """Leave the process as the next trial expects it: nothing of this trial kept.

    `compiled`: the trial used torch.compile (its model or a fused optimizer step).
    """
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    _trim_heap()


def _trim_heap() -> None:
    """Give the trial's freed host memory back to the OS.

    Each trial trains in a new thread (Ray starts one per trial), and glibc serves each
    thread from its own malloc arena; the memory a finished trial freed stays mapped in
    its arena, so without this a reused process grows by about one trial's model and
    optimizer state per trial (measured: +170 MB over 15 trials of a 0.8M-parameter MLP).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to do
            ctypes.CDLL("libc.so.6").malloc_trim(0)


# Ray Train's loggers that print a line per report and per second into a search's output:
# the worker context's (named by its file: private, tests/test_private_parts.py names it),
# and the placement-group cleaner's "State API unavailable" when Ray runs without a
# dashboard (search/trial/distributed/placement.py frees the groups itself then).
NOISY_TRAIN_MODULES = ("ray.train.v2._internal.execution.context",
                       "ray.train.v2._internal.execution.controller.placement_group_cleaner")


def quiet_train_logs() -> None:
    """Ray Train's per-report INFO lines and the cleaner's retries, kept out of the output."""
    import importlib.util

    # A PBT member's every turn restores a checkpoint: "Restored on 10.0.0.1 from ...".
    logging.getLogger("ray.tune.trainable.trainable").setLevel(logging.WARNING)
    for module in NOISY_TRAIN_MODULES:
        logging.getLogger(module).setLevel(logging.ERROR)
        with contextlib.suppress(ImportError, AttributeError, ValueError):
            origin = importlib.util.find_spec(module).origin  # the name it logs under
            logging.getLogger(origin).setLevel(logging.WARNING)
