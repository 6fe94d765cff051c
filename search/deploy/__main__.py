"""`python -m search.deploy SOURCE [--set deploy.KEY=VALUE ...]`: export, check, quantise,
benchmark and register a search's champion.

SOURCE is a search folder (runs/NAME, whose champion is NAME's `mlflow.register_as`
@champion) or a model URI (models:/NAME@alias, models:/NAME/VERSION). The PyTorch champion
stays as it is; ONNX versions are registered beside it as NAME-onnx (and NAME-onnx-int8).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search import config as config_
from search.cli import run_main
from search.config import DeployConfig, Section
from search.deploy import champion as champion_
from search.deploy import latency
from search.record.store import mlflow_settings, redact

BATCH = 64  # the large batch of the throughput figures


class _Settings(Section):
    deploy: DeployConfig = DeployConfig()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="runs/NAME, or models:/NAME@alias")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a deploy setting, e.g. --set deploy.int8=true")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the search's, or "
                   "sqlite:///mlflow.db)")
    p.add_argument("--out", help="folder for the ONNX files (default: runs/deploy/NAME-vN)")
    return p.parse_args(argv)


def settings(saved: dict, overrides: list[str]) -> DeployConfig:
    """The search's deploy section (if any) with --set applied; only deploy.* is settable."""
    raw = config_.apply_overrides({"deploy": saved}, overrides)
    return config_.validate(_Settings, raw, "--set").deploy


@dataclass
class Made:
    """One ONNX format of the champion, checked on the validation split."""

    path: Path
    session: Any
    logits: Any  # on the validation images
    val_acc: float


def make_formats(model, val_x, val_y, calibration, out: Path, cfg: DeployConfig,
                 eager_acc: float, eager_logits) -> dict[str, Made]:
    """ONNX fp32 (and int8 if asked), each compared with eager PyTorch and printed; an
    int8 model that loses more than `deploy.max_accuracy_drop` points is refused."""
    import torch

    from search.deploy import export, int8

    paths = {"onnx": export.to_onnx(model, torch.from_numpy(val_x[:2]), out / "onnx.onnx")}
    if cfg.int8:
        paths["onnx-int8"] = int8.quantize(paths["onnx"], calibration, out / "onnx-int8.onnx")
    made = {}
    for fmt, path in paths.items():
        session = export.session(path, cfg.threads)
        logits = export.run_batched(latency.ort_runner(session), val_x)
        agree = export.agreement(eager_logits, logits)
        acc = export.accuracy(logits, val_y)
        print(f"{fmt}: {path} ({path.stat().st_size / 1e6:.2f} MB): max |logit diff| "
              f"{agree.max_abs_diff:.2e}, top-1 agreement {agree.top1_agreement:.4f}, val_acc "
              f"{acc:.4f} (pytorch {eager_acc:.4f})", flush=True)
        drop = int8.accuracy_drop_points(eager_acc, acc)
        if fmt == "onnx-int8" and drop > cfg.max_accuracy_drop:
            print(f"onnx-int8: refused: val_acc drops {drop:.2f} points > "
                  f"deploy.max_accuracy_drop {cfg.max_accuracy_drop}; keeping fp32 only")
            continue
        made[fmt] = Made(path, session, logits, acc)
    return made


def register_formats(champ: champion_.Champion, made: dict[str, Made], timings, val_x,
                     eager_acc: float, cfg: DeployConfig) -> dict[str, str]:
    """Each kept format as NAME-onnx(-int8)@champion, tagged with where it came from,
    its accuracy and its measured speed."""
    from search.deploy import registry

    by_name = {t.name: t for t in timings}
    versions = {}
    for fmt, m in made.items():
        t = by_name[fmt]
        scores = {"val_acc_pytorch": f"{eager_acc:.6f}", f"val_acc_{fmt}": f"{m.val_acc:.6f}"}
        description = (f"{fmt} export of {champ.registered_name} version {champ.version} "
                       f"(trial {champ.trial_id}): val_acc {m.val_acc:.4f}, p50 {t.p50_ms:.3f} "
                       f"ms at batch 1 on {cfg.threads} threads. Input: float32 images "
                       f"(N, C, H, W) scaled to [0, 1]; output: logits.")
        versions[fmt] = registry.register_format(champ, fmt, m.path, t, scores, val_x[:2],
                                                 m.logits[:2], description, cfg.threads,
                                                 BATCH, "images")
    return versions


def deploy(args: argparse.Namespace) -> dict:
    """The whole deploy; returns what was registered and measured."""
    model_uri, tracking_uri, saved = champion_.model_uri_of(args.source, args.tracking_uri)
    cfg = settings(saved, args.set)
    champ = champion_.resolve(model_uri, tracking_uri, args.source)
    print(f"champion: {champ.registered_name} version {champ.version} (trial "
          f"{champ.trial_id}, {champ.score()}) at {redact(tracking_uri)}", flush=True)
    out = Path(args.out or Path("runs", "deploy", f"{champ.registered_name}-v{champ.version}"))
    if champ.trial.train.task is not None:  # a training task of the user's
        from search.deploy import task_deploy

        out.mkdir(parents=True, exist_ok=True)
        report = {**task_deploy.deploy(champ, cfg, out, BATCH), "when": time.strftime("%F %T")}
        if champ.parent_run_id:
            log_to_search(champ, report, report["latency"])
        return report
    # After the cheap checks, which must answer bad input in seconds: these load slowly.
    import numpy as np
    import torch

    from search.deploy import export
    from search.trial import data

    torch.set_num_threads(cfg.threads)
    ds = data.load(champ.trial.data)
    model = champ.model()
    val_x, val_y = (ds.val.x.float() / 255).numpy(), ds.val.y.numpy()
    # Calibration from the training split only: the validation split judges the result.
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))
    calibration = (ds.train.x[order[:cfg.calibration_images]].float() / 255).numpy()
    out.mkdir(parents=True, exist_ok=True)

    eager = export.run_batched(latency.torch_runner(model), val_x)
    eager_acc = export.accuracy(eager, val_y)
    made = make_formats(model, val_x, val_y, calibration, out, cfg, eager_acc, eager)
    runners = latency.runners(model, {f: m.session for f, m in made.items()}, cfg.compile)
    timings = latency.measure(runners, val_x[:1], val_x[np.arange(BATCH) % len(val_x)],
                              cfg.rounds)
    lines = latency.shown(timings, BATCH, cfg.threads, cfg.rounds)
    versions = register_formats(champ, made, timings, val_x, eager_acc, cfg)
    report = {"champion": f"models:/{champ.registered_name}/{champ.version}",
              "val_acc": {"pytorch": eager_acc, **{f: m.val_acc for f, m in made.items()}},
              "registered": versions, "threads": cfg.threads,
              "timings": [t.__dict__ for t in timings], "when": time.strftime("%F %T")}
    if champ.parent_run_id:
        log_to_search(champ, report, lines)
    return report


def log_to_search(champ: champion_.Champion, report: dict, lines: list[str]) -> None:
    """The benchmark on the search's parent run: metrics per runtime and the table."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(champ.tracking_uri)
    now = int(time.time() * 1000)
    metrics = [Metric(f"deploy_{t['name'].replace('.', '_')}_{k}", v, now, 0)
               for t in report["timings"] for k, v in t.items() if k != "name"]
    client.log_batch(champ.parent_run_id, metrics=metrics)
    client.log_text(champ.parent_run_id, "\n".join(lines) + "\n", "deploy/latency.txt")
    client.log_dict(champ.parent_run_id, report, "deploy/report.json")


def main(argv: list[str] | None = None) -> int:
    mlflow_settings()
    deploy(parse_args(argv))
    return 0


if __name__ == "__main__":
    run_main(main)
