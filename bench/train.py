"""Trial throughput: our device-resident pipeline against a plain torchvision DataLoader one.

    python -m bench.train                 # resnet9 and resnet18 on CIFAR-shaped synthetic data
    python -m bench.train --samples 256   # smaller, for a slow CPU

Both pipelines train the same model with the same optim.Adam, batch size and augmentation
(random crop with 4-pixel padding, horizontal flip, normalisation):

- ours: `search.trial.trainer.train`, the data a uint8 tensor on the device, augmented there in
  batches (search/trial/data.py); bf16 autocast and channels_last on CUDA;
- peer: a torchvision `transforms.v2` pipeline applied per sample in a `Dataset`, batched by
  a `DataLoader` with worker processes and pinned memory, then copied to the device: the
  usual tutorial recipe.

Reported per model: training images/s (the second and later epochs: the first includes
warm-up) and epoch time, side by side, and the ratio ours/peer. Writes bench/train.json.

    python -m bench.train --workers 1 2   # one trial over 1 and over 2 Ray Train workers

With `--workers`, the same trial (same global batch) runs as a Ray Train run of each worker
count on a local Ray (gloo; one CPU and one thread per worker), Adam's state sharded over
the ranks (ZeRO-1) when there are several: images/s of the whole group, its ratio to one
worker, and the optimizer state bytes each rank holds. Writes bench/train_workers.json.
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
from search.config import DataConfig, ModelConfig, TrainConfig, TrialConfig
from search.trial import data
from search.trial.trainer import pick_device, train

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


def over_workers(models_: list[str], counts: list[int], samples: int, epochs: int,
                 batch: int) -> None:
    """The multi-worker table: images/s and Adam state bytes per rank, by worker count."""
    import tempfile

    import ray

    from search.config import OptimizerConfig
    from search.trial.distributed.trial import torch_trainer

    ray.init(num_cpus=max(counts), include_dashboard=False, logging_level="error",
             log_to_driver=False)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"bench.train --workers on {machine}: {samples} images 3x32x32, global batch "
          f"{batch}, {epochs} epochs, gloo, 1 CPU and 1 thread per worker")
    print(f"{'model':10s} {'workers':>7s} {'img/s':>8s} {'vs 1':>6s} "
          f"{'state MB per rank':>24s} {'of unsharded':>12s}")
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        for model in models_:
            base = None
            for n in counts:
                cfg = TrialConfig(
                    data=DataConfig(dataset="synthetic", synthetic_samples=samples,
                                    val_fraction=0.05, synthetic_shape=(3, 32, 32)),
                    model=ModelConfig(name=model),
                    optimizer=OptimizerConfig(shard_state=n > 1),
                    train=TrainConfig(epochs=epochs, batch_size=batch, device="cpu"))
                speeds: list[float] = []
                result = torch_trainer(cfg, workers=n, worker={"CPU": 1.0, "GPU": 0.0},
                                       storage=storage, name=f"{model}-{n}").fit()
                for metrics in result.metrics_dataframe.to_dict("records"):
                    speeds.append(metrics["images_per_s"])
                state = list(result.metrics["state_bytes_per_rank"])
                speed = steady(speeds)
                base = base if base is not None else speed  # the first count's
                whole = 8 * sum(p.numel() for p in models.build(model, 10, 3, 32).parameters())
                row = {"model": model, "workers": n, "images_per_s": speed,
                       "vs_one_worker": speed / base, "state_bytes_per_rank": state,
                       "share_of_unsharded": max(state) / whole}
                rows.append(row)
                per_rank = " ".join(f"{b / 2**20:.2f}" for b in state)
                print(f"{model:10s} {n:7d} {speed:8.0f} {speed / base:6.2f} "
                      f"{per_rank:>24s} {max(state) / whole:12.2f}", flush=True)
    ray.shutdown()
    out = OUT.with_name("train_workers.json")
    out.write_text(json.dumps({"machine": machine, "samples": samples, "batch": batch,
                               "epochs": epochs, "rows": rows}, indent=1))
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet9", "resnet18"])
    p.add_argument("--samples", type=int, default=None,
                   help="synthetic training images (default: 512 on CPU, 50000 on CUDA)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=None, help="default: 64 on CPU, 512 on CUDA")
    p.add_argument("--loader-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="the peer DataLoader's worker processes")
    p.add_argument("--workers", type=int, nargs="+", metavar="N",
                   help="compare one trial over these numbers of Ray Train workers instead")
    args = p.parse_args(argv)
    if args.workers:
        over_workers(args.models if args.models != ["resnet9", "resnet18"] else
                     ["cnn", "resnet18"], args.workers, args.samples or 512, args.epochs,
                     args.batch or 64)
        return
    cuda = torch.cuda.is_available()
    samples = args.samples or (50000 if cuda else 512)
    batch = args.batch or (512 if cuda else 64)
    machine = (torch.cuda.get_device_name() if cuda
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"bench.train on {machine}: {samples} images 3x32x32, batch {batch}, "
          f"{args.epochs} epochs, DataLoader workers {args.loader_workers}")
    header = f"{'model':10s} {'ours img/s':>11s} {'peer img/s':>11s} {'ours/peer':>10s} " \
             f"{'ours epoch s':>13s} {'peer epoch s':>13s}"
    print(header)
    rows = []
    for model in args.models:
        a = steady(ours(model, samples, args.epochs, batch))
        b = steady(peer(model, samples, args.epochs, batch, args.loader_workers))
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
