"""Next-character prediction on corpus.txt, scored in bits per character.

The text's first 90% trains, the last 10% validates (a contiguous split: no validation
window overlaps a training one). A batch is `batch_size` windows of `context` characters
at random offsets, and the same windows shifted by one as targets; an epoch sees about as
many characters as the training text holds.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

CORPUS = Path(__file__).with_name("corpus.txt")


class CharLM:
    """Cross-entropy of the next character; val_bits_per_char (the search's metric) and
    val_loss (nats per character), over every full window of the validation text."""

    unit = "sequences"  # throughput: sequences_per_s

    def __init__(self, device: torch.device, context: int = 64,
                 val_fraction: float = 0.1) -> None:
        text = CORPUS.read_text(encoding="utf-8")
        self.vocab = sorted(set(text))
        ids = torch.tensor([self.vocab.index(c) for c in text], dtype=torch.int64)
        cut = int(len(ids) * (1 - val_fraction))
        self.context = context
        self.train_ids, self.val_ids = ids[:cut].to(device), ids[cut:].to(device)

    def model_args(self) -> dict:
        return {"vocab_size": len(self.vocab)}

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.train_ids) // (batch_size * self.context))

    def windows(self, ids: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        offsets = starts[:, None] + torch.arange(self.context, device=ids.device)
        return ids[offsets], ids[offsets + 1]

    def batches(self, batch_size: int, epoch: int, generator: torch.Generator):
        last = len(self.train_ids) - self.context - 1
        for _ in range(self.steps_per_epoch(batch_size)):
            starts = torch.randint(0, last + 1, (batch_size,), device=self.train_ids.device,
                                   generator=generator)
            yield self.windows(self.train_ids, starts)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        logits = model(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                           y.reshape(-1))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        n = (len(self.val_ids) - 1) // self.context
        starts = torch.arange(n, device=self.val_ids.device) * self.context
        nats, count = 0.0, 0
        for chunk in starts.split(256):
            x, y = self.windows(self.val_ids, chunk)
            logits = model(x).float()
            nats += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                y.reshape(-1), reduction="sum").item()
            count += y.numel()
        return {"val_bits_per_char": nats / count / math.log(2), "val_loss": nats / count}

    def example_input(self) -> Tensor:
        return self.windows(self.val_ids, torch.tensor([0, self.context],
                                                        device=self.val_ids.device))[0]


class CausalCNN(nn.Module):
    """Embeddings, then dilated causal convolutions (each position sees only the characters
    before it), then a logit per character of the vocabulary: (N, T) ids -> (N, T, V)."""

    def __init__(self, vocab_size: int, width: int = 64, layers: int = 4,
                 kernel: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.convs = nn.ModuleList(nn.Conv1d(width, width, kernel, dilation=2 ** i)
                                   for i in range(layers))
        self.pads = [(kernel - 1) * 2 ** i for i in range(layers)]
        self.head = nn.Conv1d(width, vocab_size, 1)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(ids).transpose(1, 2)  # (N, width, T)
        for conv, pad in zip(self.convs, self.pads, strict=True):
            h = h + nn.functional.gelu(conv(nn.functional.pad(h, (pad, 0))))
        return self.head(h).transpose(1, 2)


def causal_cnn(**kwargs) -> nn.Module:
    """`model.name: charlm.task:causal_cnn`; `model.kwargs`: width, layers, kernel."""
    return CausalCNN(**kwargs)
