"""The champion as ONNX, and how far the exported graph's answers are from PyTorch's."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT, OUTPUT = "images", "logits"  # the ONNX graph's names, as served


@dataclass(frozen=True)
class Agreement:
    """Two models' logits over the same images."""

    max_abs_diff: float
    top1_agreement: float  # fraction of images on which both pick the same class


def agreement(a: np.ndarray, b: np.ndarray) -> Agreement:
    return Agreement(float(np.abs(a - b).max()), float((a.argmax(1) == b.argmax(1)).mean()))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def to_onnx(model: nn.Module, example: torch.Tensor, path: Path,
            names: tuple[str, str] = (INPUT, OUTPUT)) -> Path:
    """Export with torch's (dynamo) exporter, the batch dimension dynamic; one file. `names`:
    the graph's input and output (an image classifier's, or a task's)."""
    # The exporter prints its progress and logs warnings of no use to a user here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model, (example,), dynamo=True, verbose=False,
            input_names=[names[0]], output_names=[names[1]],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    program.save(str(path))
    return path


def session(path: Path, threads: int):
    """An ONNX Runtime CPU session with a fixed number of threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batched(predict, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """`predict` over `images` in batches, concatenated."""
    return np.concatenate([predict(images[i:i + batch]) for i in range(0, len(images), batch)])
