"""Image classification as a task (search/trial/task.py): the built-in one, used when
`train.task` is not set.

`data.dataset` (built-in, an image folder or a data function) as uint8 tensors on the
device, batched, augmented and normalised there (search/trial/data.py); cross-entropy with
`train.label_smoothing`; validation loss and accuracy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from search.config import TrialConfig
from search.trial import data

METRICS = ("val_loss", "val_acc")  # what `evaluate` reports


class ImageClassification:
    """`cfg.data` classified by a network of `models`' contract."""

    unit = "images"  # the training throughput is reported as images_per_s
    channels_last = False

    def __init__(self, cfg: TrialConfig, device: torch.device,
                 dataset: data.Dataset | None = None) -> None:
        self.cfg = cfg
        self.ds = (dataset or data.load(cfg.data)).to(device)
        self.channels_last = device.type == "cuda"
        self.val_loader = data.DeviceLoader(self.ds.val, 1024, self.ds.mean, self.ds.std,
                                            train=False, channels_last=self.channels_last)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)

    def model_args(self) -> dict[str, Any]:
        return {"num_classes": self.ds.num_classes, "in_channels": self.ds.in_channels,
                "image_size": self.ds.image_size}

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.ds.train) // batch_size)  # the last partial batch is dropped

    def batches(self, batch_size: int, epoch: int,
                generator: torch.Generator) -> data.DeviceLoader:
        d = self.cfg.data
        return data.DeviceLoader(self.ds.train, batch_size, self.ds.mean, self.ds.std,
                                 train=True, generator=generator, crop_padding=d.crop_padding,
                                 flip=d.flip, channels_last=self.channels_last)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        xb, yb = batch
        return self.loss_fn(model(xb), yb)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean cross-entropy and accuracy over the validation split."""
        loss_sum, correct, count = 0.0, 0, 0
        for xb, yb in self.val_loader:
            logits = model(xb)
            loss_sum += nn.functional.cross_entropy(logits.float(), yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
            count += len(yb)
        return {"val_loss": loss_sum / count, "val_acc": correct / count}

    def diverged(self) -> dict[str, float]:
        return {"val_loss": float("inf"), "val_acc": 0.0}

    def example_input(self) -> Tensor:
        """Two images as a deployed model takes them: scaled to [0, 1]."""
        return torch.rand(2, self.ds.in_channels, self.ds.image_size, self.ds.image_size)
