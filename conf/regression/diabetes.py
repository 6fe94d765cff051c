"""Regression on scikit-learn's bundled diabetes data (442 patients, 10 features, a disease
progression score one year later): a training task (search/trial/task.py) and the network it
trains, both named in search.yaml beside this file (`diabetes:Diabetes`, `diabetes:regressor`).

The network takes the 10 features as load_diabetes gives them and answers in the target's
own units: it standardises its input and scales its output with the training split's
statistics, which the task passes to the factory through `model_args()`. So the deployed
model (ONNX included) needs nothing besides itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Diabetes:
    """Mean squared error on the standardised target; validation RMSE and MAE in the
    target's units. Ties on val_rmse go to the lower val_mae."""

    tie_break = ("val_mae", "min")
    unit = "patients"  # throughput: patients_per_s

    def __init__(self, device: torch.device, val_fraction: float = 0.2,
                 split_seed: int = 0) -> None:
        from sklearn.datasets import load_diabetes  # bundled with scikit-learn: no download

        x, y = load_diabetes(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.float32).unsqueeze(1)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
        n_val = round(len(x) * val_fraction)
        val, train = order[:n_val], order[n_val:]
        self.stats = {"x_mean": x[train].mean(0).tolist(), "x_std": x[train].std(0).tolist(),
                      "y_mean": y[train].mean().item(), "y_std": y[train].std().item()}
        self.train_x, self.train_y = x[train].to(device), y[train].to(device)
        self.val_x, self.val_y = x[val].to(device), y[val].to(device)

    def model_args(self) -> dict:
        return {"in_features": self.train_x.shape[1], **self.stats}

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.train_x) // batch_size)

    def batches(self, batch_size: int, epoch: int, generator: torch.Generator):
        order = torch.randperm(len(self.train_x), device=self.train_x.device,
                               generator=generator)
        for i in range(self.steps_per_epoch(batch_size)):  # the last partial batch dropped
            rows = order[i * batch_size:(i + 1) * batch_size]
            yield self.train_x[rows], self.train_y[rows]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x) / self.stats["y_std"],
                                      y / self.stats["y_std"])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        error = model(self.val_x) - self.val_y
        return {"val_rmse": error.pow(2).mean().sqrt().item(),
                "val_mae": error.abs().mean().item()}

    def example_input(self) -> Tensor:
        return self.val_x[:2]


class Regressor(nn.Module):
    """An MLP between a standardising input and a rescaling output."""

    def __init__(self, in_features: int, x_mean: list[float], x_std: list[float],
                 y_mean: float, y_std: float, hidden: int = 64, depth: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.tensor(x_mean))
        self.register_buffer("x_std", torch.tensor(x_std))
        self.y_mean, self.y_std = y_mean, y_std
        layers, width = [], in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.x_mean) / self.x_std) * self.y_std + self.y_mean


def regressor(**kwargs) -> nn.Module:
    """`model.name: diabetes:regressor`; `model.kwargs`: hidden, depth, dropout."""
    return Regressor(**kwargs)
