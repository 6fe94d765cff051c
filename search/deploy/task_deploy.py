"""Deploying the champion of a training task of the user's (`train.task`): ONNX with the
task's input signature, checked against eager PyTorch on the task's own validation data.

The task is built again from the champion's config; its `evaluate` runs once on the eager
network through a `Recorder`, which keeps every input the task fed it and every output,
and once on each ONNX Runtime session (wrapped as a module): the outputs are compared
input by input, and the metrics side by side. Int8 is kept only when the search's metric
(the version's `judged.metric`) worsens by at most `deploy.max_metric_change`, in the
metric's own units; with no bound, or no metric to judge by, it is refused with a line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search.config import DeployConfig
from search.deploy import champion as champion_
from search.deploy import export, latency
from search.trial import task as task_

NAMES = ("input", "output")  # the ONNX graph's input and output, as served


class Recorder(nn.Module):
    """A network that keeps, on the CPU, every input it is called with and its output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inputs: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.inputs.append(x.detach().cpu().numpy())
        self.outputs.append(out.detach().float().cpu().numpy())
        return out


class OnnxModule(nn.Module):
    """An ONNX Runtime session as a module: what the task's `evaluate` can call."""

    def __init__(self, session) -> None:
        super().__init__()
        self.run = latency.ort_runner(session)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(x.detach().cpu().numpy()))


@dataclass
class Compared:
    """One ONNX format against eager PyTorch on the task's validation inputs."""

    path: Path
    session: Any
    max_abs_diff: float
    metrics: dict[str, float]


def evaluate(task: task_.Task, model: nn.Module, name: str) -> dict[str, float]:
    with torch.no_grad():
        return task_.check_metrics(name, task.evaluate(model.eval()))


def compare(task: task_.Task, name: str, path: Path, threads: int,
            recorded: Recorder) -> Compared:
    session = export.session(path, threads)
    run = latency.ort_runner(session)
    diff = max(float(np.abs(run(x) - y).max()) for x, y in
               zip(recorded.inputs, recorded.outputs, strict=True))
    return Compared(path, session, diff, evaluate(task, OnnxModule(session), name))


def worsening(metric: str, mode: str, eager: dict[str, float],
              candidate: dict[str, float]) -> float:
    """How much worse `candidate` is than `eager` on `metric` (negative: better)."""
    change = candidate[metric] - eager[metric]
    return change if mode == "min" else -change


def int8_refusal(cfg: DeployConfig, judged, metrics: dict[str, float]) -> str | None:
    """Why int8 cannot be judged for this champion, or None."""
    if judged is None or judged.metric not in metrics:
        return ("the champion records no search metric that its task's evaluate reports, so "
                "int8 cannot be judged")
    if cfg.max_metric_change is None:
        return (f"set deploy.max_metric_change to how much {judged.metric} may worsen "
                "(in its own units) to judge int8 by")
    return None


def calibration(task: task_.Task, trial, samples: int) -> np.ndarray:
    """Inputs of the task's first training batches (seeded), up to `samples`: what int8's
    activation ranges are calibrated on (never validation data)."""
    generator = torch.Generator().manual_seed(trial.train.seed)
    parts, n = [], 0
    for batch in task.batches(trial.train.batch_size, 1, generator):
        parts.append(batch[0].detach().cpu().numpy())
        n += len(parts[-1])
        if n >= samples:
            break
    return np.concatenate(parts)[:samples]


def make_formats(champ: champion_.Champion, task: task_.Task, model: nn.Module,
                 cfg: DeployConfig, out: Path) -> tuple[dict[str, float], Recorder,
                                                        dict[str, Compared]]:
    """The eager metrics, the recorded validation inputs and outputs, and each kept ONNX
    format compared with eager (printed)."""
    from search.deploy import int8

    name = champ.trial.train.task
    recorded = Recorder(model)
    eager = evaluate(task, recorded, name)
    example = task.example_input().detach().cpu()
    paths = {"onnx": export.to_onnx(model, example, out / "onnx.onnx", NAMES)}
    judged = champ.judged
    if cfg.int8:
        refusal = int8_refusal(cfg, judged, eager)
        if refusal:
            print(f"onnx-int8: refused: {refusal}; keeping fp32 only", flush=True)
        else:
            paths["onnx-int8"] = int8.quantize(paths["onnx"],
                                               calibration(task, champ.trial,
                                                           cfg.calibration_images),
                                               out / "onnx-int8.onnx", NAMES[0])
    made = {}
    for fmt, path in paths.items():
        c = compare(task, name, path, cfg.threads, recorded)
        shown = "  ".join(f"{k} {v:.4f} (pytorch {eager[k]:.4f})" for k, v in c.metrics.items())
        print(f"{fmt}: {path} ({path.stat().st_size / 1e6:.2f} MB): max |output diff| "
              f"{c.max_abs_diff:.2e} over {sum(len(x) for x in recorded.inputs)} validation "
              f"inputs, {shown}", flush=True)
        if fmt == "onnx-int8":
            worse = worsening(judged.metric, judged.mode, eager, c.metrics)
            if worse > cfg.max_metric_change:
                print(f"onnx-int8: refused: {judged.metric} worsens by {worse:.4f} > "
                      f"deploy.max_metric_change {cfg.max_metric_change}; keeping fp32 only")
                continue
        made[fmt] = c
    return eager, recorded, made


def deploy(champ: champion_.Champion, cfg: DeployConfig, out: Path, batch: int) -> dict:
    """The task champion's deploy: ONNX (and int8) checked, timed, registered."""
    from search.deploy import registry

    model = champ.model()  # imports the user's code from where the search found it
    task = task_.build(champ.trial, torch.device("cpu"))
    eager, recorded, made = make_formats(champ, task, model, cfg, out)
    inputs = np.concatenate(recorded.inputs)
    runners = latency.runners(model, {f: c.session for f, c in made.items()}, cfg.compile)
    timings = latency.measure(runners, inputs[:1], inputs[np.arange(batch) % len(inputs)],
                              cfg.rounds)
    lines = latency.shown(timings, batch, cfg.threads, cfg.rounds, unit="samples")
    by_name = {t.name: t for t in timings}
    example = task.example_input().detach().cpu().numpy()
    versions = {}
    for fmt, c in made.items():
        t = by_name[fmt]
        scores = {"task": champ.trial.train.task, "max_abs_diff": f"{c.max_abs_diff:.3e}",
                  **{f"{k}_pytorch": f"{v:.6f}" for k, v in eager.items()},
                  **{f"{k}_{fmt}": f"{v:.6f}" for k, v in c.metrics.items()}}
        description = (f"{fmt} export of {champ.registered_name} version {champ.version} "
                       f"(trial {champ.trial_id}), task {champ.trial.train.task}: "
                       + ", ".join(f"{k} {v:.4f}" for k, v in c.metrics.items())
                       + f"; p50 {t.p50_ms:.3f} ms at batch 1 on {cfg.threads} threads. "
                       f"Input '{NAMES[0]}' {example.dtype} {list(example.shape[1:])} per "
                       f"sample, as the task's example_input(); output '{NAMES[1]}'.")
        outputs = OnnxModule(c.session)(torch.from_numpy(example)).numpy()
        versions[fmt] = registry.register_format(champ, fmt, c.path, t, scores, example,
                                                 outputs, description, cfg.threads, batch,
                                                 "samples")
    return {"champion": f"models:/{champ.registered_name}/{champ.version}",
            "metrics": {"pytorch": eager, **{f: c.metrics for f, c in made.items()}},
            "max_abs_diff": {f: c.max_abs_diff for f, c in made.items()},
            "registered": versions, "threads": cfg.threads,
            "timings": [t.__dict__ for t in timings], "latency": lines}
