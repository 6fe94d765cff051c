"""The ONNX champion in MLflow's registry, beside (not instead of) the PyTorch one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.record.store import CHAMPION, reopened

SUFFIX = {"onnx": "-onnx", "onnx-int8": "-onnx-int8"}  # registered name = champion's + this


def register(path: Path, name: str, run_id: str, tracking_uri: str, example: np.ndarray,
             logits: np.ndarray, tags: dict[str, str], description: str) -> str:
    """Log the ONNX file as an MLflow model under the champion trial's run (`run_id`),
    with a signature and an input example; register it as `name`, alias `champion`."""
    import mlflow
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    with reopened(client, run_id):
        info = mlflow.onnx.log_model(
            onnx.load(str(path)), name=path.stem, registered_model_name=name,
            signature=infer_signature(example, logits), input_example=example,
            # What this machine's ONNX Runtime offers (CUDA first where it is there).
            onnx_execution_providers=onnxruntime.get_available_providers(),
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=description)
    return version
