"""Latency and throughput of several runtimes of one model, timed interleaved.

Interleaving (round r times every runtime once before round r+1) spreads the machine's
drift (frequency, other processes) evenly over the runtimes, so their ratios stay fair
on a busy 2-core machine where back-to-back blocks would not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Runner = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class Timing:
    name: str
    p50_ms: float  # one image a call
    p95_ms: float
    images_per_s: float  # a large batch a call (median call)


def torch_runner(model) -> Runner:
    """A PyTorch module as a runner: numpy images in, numpy logits out."""
    import torch

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images)).numpy()
    return run


def ort_runner(session) -> Runner:
    """An ONNX Runtime session as a runner (fed through its one input, whatever its name)."""
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return session.run(None, {name: images})[0]
    return run


def runners(model, sessions: dict, compile: bool) -> dict[str, Runner]:
    """Eager PyTorch (the reference, first), torch.compile with freezing (weights folded
    into constants: inference only), and each ONNX Runtime session, by name."""
    import torch

    out = {"pytorch": torch_runner(model)}
    if compile:
        with torch.no_grad():
            out["torch.compile"] = torch_runner(torch.compile(model, options={"freezing": True}))
    out.update({name: ort_runner(session) for name, session in sessions.items()})
    return out


def interleaved(runners: dict[str, Runner], images: np.ndarray,
                rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each runner on `images`, `rounds` calls each, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(images)
            times[name].append(time.perf_counter() - t0)
    return times


def measure(runners: dict[str, Runner], one: np.ndarray, many: np.ndarray, rounds: int,
            warmup: int = 3) -> list[Timing]:
    """p50/p95 latency at batch len(one) and images/s at batch len(many), per runner.
    Warm-up calls (compilation, allocator growth) are not timed."""
    interleaved(runners, one, warmup)
    interleaved(runners, many, warmup)
    small = interleaved(runners, one, rounds)
    large = interleaved(runners, many, max(rounds // 4, 5))
    return [Timing(name, float(np.percentile(small[name], 50) * 1e3),
                   float(np.percentile(small[name], 95) * 1e3),
                   len(many) / float(np.median(large[name]))) for name in runners]


def shown(timings: list[Timing], batch: int, threads: int, rounds: int,
          unit: str = "img") -> list[str]:
    """`table`'s lines, printed under a heading that says how they were measured."""
    lines = table(timings, batch, unit)
    print(f"latency, {threads} threads, interleaved, {rounds} calls at batch 1:")
    for line in lines:
        print("  " + line)
    return lines


def table(timings: list[Timing], batch: int, unit: str = "img") -> list[str]:
    """The timings as text lines, with ratios to the first runner (the reference)."""
    ref = timings[0]
    lines = [f"{'runtime':<14} {'p50 ms':>8} {'p95 ms':>8} {'x ' + ref.name:>10} "
             f"{unit + '/s@' + str(batch):>11} {'x ' + ref.name:>10}"]
    for t in timings:
        lines.append(f"{t.name:<14} {t.p50_ms:8.3f} {t.p95_ms:8.3f} {ref.p50_ms / t.p50_ms:10.2f} "
                     f"{t.images_per_s:11.0f} {t.images_per_s / ref.images_per_s:10.2f}")
    return lines
