"""One rank of a data-parallel trial: its share of the work and what it shares with the others.

The global batch is `train.batch_size`. Every rank draws the same shuffled order and the
same augmentation (one generator, one seed) and keeps its contiguous part of each global
batch; DDP averages the gradients, so with equal parts the step is the one a single
process would take on the whole batch (up to the order of floating-point sums). Validation
is split across the ranks and its sums all-reduced, so every rank reports the same numbers.
With `optimizer.shard_state` the project's Adam runs inside torch's
`ZeroRedundancyOptimizer` (ZeRO-1): each rank keeps the moments of its share of the
parameters only, and a checkpoint consolidates them on rank 0 into a plain `optim.Adam`
state dict, which any trial (one worker or several) loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel


def batch_part(size: int, rank: int, world: int) -> slice:
    """The rows of a batch of `size` that `rank` of `world` trains on: contiguous, equal
    when `world` divides `size` (the config makes sure it does)."""
    return slice(size * rank // world, size * (rank + 1) // world)


class Ranks:
    """This process's place in the group, and the hooks `search.trial.trainer.train` calls."""

    def __init__(self, device: torch.device, shard_state: bool,
                 checkpoint_due: Callable[[int], bool] = lambda epoch: True) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = device
        self.shard_state = shard_state
        self._checkpoint_due = checkpoint_due  # rank 0's rule; the others follow it

    # ------------------------------------------------------------ model and optimizer

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around the model: gradients averaged over the ranks during backward; rank 0's
        initial weights broadcast to all."""
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def optimizer(self, params, optimizer_class: type,
                  kwargs: dict[str, Any]) -> torch.optim.Optimizer:
        """`optimizer_class(params, **kwargs)`, its state sharded over the ranks with
        `shard_state`."""
        if not self.shard_state:
            return optimizer_class(params, **kwargs)
        return ZeroRedundancyOptimizer(params, optimizer_class=optimizer_class, **kwargs)

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
        """The whole optimizer state for a checkpoint (on rank 0; None on the others). With
        ZeRO every rank must call this: consolidating is a collective."""
        if isinstance(opt, ZeroRedundancyOptimizer):
            opt.consolidate_state_dict(to=0)
        return opt.state_dict() if self.rank == 0 else None

    def state_bytes(self, opt: torch.optim.Optimizer) -> list[int]:
        """Bytes of optimizer state each rank holds (`optim.Adam.state_bytes`), by rank."""
        local = opt.optim if isinstance(opt, ZeroRedundancyOptimizer) else opt
        sizes: list[int] = [0] * self.world
        dist.all_gather_object(sizes, int(local.state_bytes()))
        return sizes

    # ------------------------------------------------------------ data and metrics

    def part(self, size: int) -> slice:
        return batch_part(size, self.rank, self.world)

    def sum(self, *values: float | torch.Tensor) -> list[float]:
        """Each value summed over the ranks (one all-reduce for all of them)."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(()).cpu()
                         for v in values]).to(self.device)
        dist.all_reduce(t)
        return t.tolist()

    def checkpoint_due(self, epoch: int) -> bool:
        """Rank 0's decision whether this epoch is checkpointed, the same on every rank (the
        ranks must agree: consolidating ZeRO's state is a collective)."""
        flag = torch.tensor([int(self._checkpoint_due(epoch)) if self.rank == 0 else 0],
                            device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def dropout_seed(self, seed: int, epoch: int) -> None:
        """Ranks other than 0 draw their own dropout masks: rank 0 keeps the single-process
        random stream (so a 1-worker and an n-worker trial start alike), the others reseed
        per epoch, deterministically (a resumed trial draws the same)."""
        if self.rank:
            torch.manual_seed(seed + 1_000_003 * self.rank + epoch)
