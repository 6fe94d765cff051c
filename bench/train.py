"""Trial throughput: our device-resident pipeline against a plain torchvision DataLoader one.

    python -m bench.train                 # resnet9 and resnet18 on CIFAR-shaped synthetic data
    python -m bench.train --samples 256   # smaller, for a slow CPU

Both pipelines train the same model with the same optim.Adam, batch size and augmentation
(random crop with 4-pixel padding, horizontal flip, normalisation):

- ours: `search.trainer.train`, the data a uint8 tensor on the device, augmented there in
  batches (search/data.py); bf16 autocast and channels_last on CUDA;
- peer: a torchvision `transforms.v2` pipeline applied per sample in a `Dataset`, batched by
  a `DataLoader` with worker processes and pinned memory, then copied to the device: the
  usual tutorial recipe.

Reported per model: training images/s (the second and later epochs: the first includes
warm-up) and epoch time, side by side, and the ratio ours/peer. Writes bench/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

import models
import optim
from search import data
from search.config import DataConfig, ModelConfig, TrainConfig, TrialConfig
from search.trainer import pick_device, train

OUT = Path(__file__).with_name("train.json")


def ours(model: str, samples: int, epochs: int, batch: int) -> list[float]:
    """images/s of each epoch of our trainer."""
    cfg = TrialConfig(
        data=DataConfig(dataset="synthetic", synthetic_samples=samples, val_fraction=0.05,
                        synthetic_shape=(3, 32, 32), crop_padding=4, flip=True),
        model=ModelConfig(name=model),
        train=TrainConfig(epochs=epochs, batch_size=batch),
    )
    speeds: list[float] = []
    train(cfg, lambda m, _: speeds.append(m["images_per_s"]))
    return speeds


class PerSample(Dataset):
    """A CIFAR-like dataset as tutorials build it: one transformed image per __getitem__."""

    def __init__(self, split: data.Split, mean, std) -> None:
        self.split = split
        self.transform = v2.Compose([
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(self.split.x[i]), self.split.y[i]


def peer(model: str, samples: int, epochs: int, batch: int, workers: int) -> list[float]:
    """images/s of each epoch of the DataLoader pipeline."""
    device = pick_device("auto")
    ds = data.load(DataConfig(dataset="synthetic", synthetic_samples=samples, val_fraction=0.05,
                              synthetic_shape=(3, 32, 32)))
    loader = DataLoader(PerSample(ds.train, ds.mean, ds.std), batch_size=batch, shuffle=True,
                        drop_last=True, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    torch.manual_seed(0)
    net = models.build(model, ds.num_classes, 3, 32).to(device)
    opt = optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    speeds = []
    for _ in range(epochs):
        net.train()
        t0, seen = time.perf_counter(), 0
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = loss_fn(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(yb)
        if device.type == "cuda":
            torch.cuda.synchronize()
        speeds.append(seen / (time.perf_counter() - t0))
    return speeds


def steady(speeds: list[float]) -> float:
    return statistics.median(speeds[1:] if len(speeds) > 1 else speeds)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet9", "resnet18"])
    p.add_argument("--samples", type=int, default=None,
                   help="synthetic training images (default: 512 on CPU, 50000 on CUDA)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=None, help="default: 64 on CPU, 512 on CUDA")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    samples = args.samples or (50000 if cuda else 512)
    batch = args.batch or (512 if cuda else 64)
    machine = (torch.cuda.get_device_name() if cuda
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"bench.train on {machine}: {samples} images 3x32x32, batch {batch}, "
          f"{args.epochs} epochs, DataLoader workers {args.workers}")
    header = f"{'model':10s} {'ours img/s':>11s} {'peer img/s':>11s} {'ours/peer':>10s} " \
             f"{'ours epoch s':>13s} {'peer epoch s':>13s}"
    print(header)
    rows = []
    for model in args.models:
        a = steady(ours(model, samples, args.epochs, batch))
        b = steady(peer(model, samples, args.epochs, batch, args.workers))
        n = samples * 0.95
        row = {"model": model, "ours_images_per_s": a, "peer_images_per_s": b,
               "ratio": a / b, "ours_epoch_s": n / a, "peer_epoch_s": n / b}
        rows.append(row)
        print(f"{model:10s} {a:11.0f} {b:11.0f} {a / b:10.2f} {n / a:13.2f} {n / b:13.2f}",
              flush=True)
    OUT.write_text(json.dumps({"machine": machine, "samples": samples, "batch": batch,
                               "epochs": args.epochs, "rows": rows}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
