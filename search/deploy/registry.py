"""The ONNX champion in MLflow's registry, beside (not instead of) the PyTorch one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.record.store import CHAMPION, reopened

SUFFIX = {"onnx": "-onnx", "onnx-int8": "-onnx-int8"}  # registered name = champion's + this


def register_format(champ, fmt: str, path: Path, timing, scores: dict[str, str],
                    example: np.ndarray, outputs: np.ndarray, description: str,
                    threads: int, batch: int, unit: str) -> str:
    """One kept ONNX format of `champ` (a search.deploy.champion.Champion) registered as
    NAME-onnx(-int8)@champion, tagged with where it came from, its `scores` and its
    measured speed (`timing`, at batch 1 and `batch`, in `unit`s a second)."""
    name = champ.registered_name + SUFFIX[fmt]
    tags = {"source_model": f"{champ.registered_name}/{champ.version}",
            "source_trial": str(champ.trial_id), "source_run": champ.run_id, **scores,
            "p50_ms_batch1": f"{timing.p50_ms:.4f}", "p95_ms_batch1": f"{timing.p95_ms:.4f}",
            f"{unit}_per_s_batch{batch}": f"{timing.images_per_s:.1f}",
            "threads": str(threads)}
    version = register(path, name, champ.run_id, champ.tracking_uri, example, outputs, tags,
                       description)
    print(f"registered {name} version {version} as @{CHAMPION}: models:/{name}@{CHAMPION}")
    return version


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
