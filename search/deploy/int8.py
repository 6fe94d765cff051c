"""ONNX Runtime static int8 quantisation, calibrated on training images.

Static (activations calibrated ahead of time) rather than dynamic: for convolutional
networks ORT's dynamic quantisation is 3-10x slower than fp32. QDQ format, per-channel
int8 weights, uint8 activations; the graph is pre-processed (shape inference, fusions)
first, as ORT recommends. Calibration never sees validation images: those judge the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.deploy.export import INPUT


class _Calibration:
    """ORT's CalibrationDataReader protocol over batches of training images."""

    def __init__(self, images: np.ndarray, batch: int = 32, name: str = INPUT) -> None:
        self._batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])
        self.name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.name: batch}


def quantize(fp32: Path, calibration: np.ndarray, out: Path, name: str = INPUT) -> Path:
    """`fp32` quantised to int8 at `out`, activation ranges from `calibration` inputs (of
    the graph's input `name`)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + "-pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), _Calibration(calibration, name=name),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    pre.unlink()
    return out


def accuracy_drop_points(reference: float, candidate: float) -> float:
    """How many percentage points of accuracy `candidate` loses against `reference`."""
    return (reference - candidate) * 100.0
