"""Deployment speed: eager PyTorch, torch.compile, ONNX Runtime fp32 and int8, side by side.

    python -m bench.deploy                       # cnn on digits, resnet18 on CIFAR-shaped data
    python -m bench.deploy --models cnn --threads 1 --rounds 300

The same code path as `python -m search.deploy` (search/deploy/): torch's ONNX exporter
with a dynamic batch, ONNX Runtime static int8 (QDQ, per-channel weights) calibrated on
256 training images, every runtime on the same fixed number of threads, timed interleaved
(round r times each runtime once). Per model: p50/p95 latency at batch 1 and images/s at
batch 64, ratios to eager, file sizes, and each format's top-1 agreement with eager and
accuracy on the validation split.

- cnn on digits: trained first with the project's trainer (10 epochs, about 2 s), so the
  int8 accuracy figure means something.
- resnet18 on CIFAR-shaped data (3x32x32 `synthetic`: CIFAR-10 itself cannot be
  downloaded here): untrained weights, so accuracy is chance; top-1 agreement with eager
  is the figure that tells what int8 costs.
Writes bench/deploy.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import models
from search.config import DataConfig, ModelConfig, TrainConfig, TrialConfig
from search.deploy import export, int8, latency
from search.trial import data
from search.trial.trainer import deployable, train

MODELS = {
    "cnn": (DataConfig(dataset="digits"), 10),  # (data, training epochs)
    "resnet18": (DataConfig(dataset="synthetic", synthetic_samples=2048,
                            synthetic_shape=[3, 32, 32]), 0),
}


def champion(name: str, cfg: DataConfig, epochs: int, ds: data.Dataset) -> torch.nn.Module:
    """The network as deploy gets it (normalising wrapper included), trained if epochs."""
    if not epochs:
        net = models.build(name, ds.num_classes, ds.in_channels, ds.image_size)
        return models.Normalized(net, list(ds.mean), list(ds.std)).eval()
    last = {}
    trial = TrialConfig(data=cfg, model=ModelConfig(name=name),
                        train=TrainConfig(epochs=epochs, batch_size=64, device="cpu"))
    train(trial, lambda metrics, checkpoint: last.update(checkpoint=checkpoint), dataset=ds)
    return deployable(last["checkpoint"])


def bench_model(name: str, threads: int, rounds: int, work: Path) -> dict:
    cfg, epochs = MODELS[name]
    ds = data.load(cfg)
    model = champion(name, cfg, epochs, ds)
    val_x, val_y = (ds.val.x.float() / 255).numpy(), ds.val.y.numpy()
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))
    calibration = (ds.train.x[order[:256]].float() / 255).numpy()
    fp32 = export.to_onnx(model, torch.from_numpy(val_x[:2]), work / f"{name}.onnx")
    q = int8.quantize(fp32, calibration, work / f"{name}-int8.onnx")
    sessions = {"onnx": export.session(fp32, threads), "onnx-int8": export.session(q, threads)}
    runners = latency.runners(model, sessions, compile=True)
    eager = export.run_batched(runners["pytorch"], val_x)
    quality = {}
    for fmt in ("pytorch", *sessions):
        logits = export.run_batched(runners[fmt], val_x)
        agree = export.agreement(eager, logits)
        quality[fmt] = {"top1_agreement": agree.top1_agreement, "max_abs_diff": agree.max_abs_diff,
                        "val_acc": export.accuracy(logits, val_y)}
    timings = latency.measure(runners, val_x[:1], val_x[np.arange(64) % len(val_x)], rounds)
    return {"model": name, "data": cfg.dataset, "trained_epochs": epochs,
            "mb": {"onnx": fp32.stat().st_size / 1e6, "onnx-int8": q.stat().st_size / 1e6},
            "quality": quality, "timings": [t.__dict__ for t in timings],
            "table": latency.table(timings, 64)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cnn,resnet18")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=200, help="timed calls at batch 1")
    p.add_argument("--out", default=str(Path(__file__).with_name("deploy.json")))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            r = bench_model(name, args.threads, args.rounds, Path(tmp))
            results.append(r)
            t = {x["name"]: x for x in r["timings"]}
            print(f"\n{name} on {r['data']} ({r['trained_epochs']} epochs trained), "
                  f"{args.threads} threads, {args.rounds} calls at batch 1, interleaved:")
            for line in r["table"]:
                print("  " + line)
            print(f"  files: onnx {r['mb']['onnx']:.2f} MB, int8 {r['mb']['onnx-int8']:.2f} MB")
            for fmt, q in r["quality"].items():
                print(f"  {fmt:<10} val_acc {q['val_acc']:.4f}  top-1 agreement with eager "
                      f"{q['top1_agreement']:.4f}  max |logit diff| {q['max_abs_diff']:.2e}")
            onnx_b1 = t["pytorch"]["p50_ms"] / t["onnx"]["p50_ms"]
            int8_b64 = t["onnx-int8"]["images_per_s"] / t["onnx"]["images_per_s"]
            print(f"  ONNX fp32 / eager at batch 1: {onnx_b1:.2f}x (target >= 2); "
                  f"int8 / fp32 ONNX at batch 64: {int8_b64:.2f}x"
                  + (" (target >= 1.5)" if name == "resnet18" else ""))
    Path(args.out).write_text(json.dumps({"when": time.strftime("%F %T"),
                                          "threads": args.threads, "results": results},
                                         indent=1))


if __name__ == "__main__":
    main()
