"""search.serve: a registered ONNX model served by Ray Serve answers as MLflow's scoring
server does, batches concurrent requests, and bad input is refused before Ray starts."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import ray
import torch
from mlflow import MlflowClient
from mlflow.models import infer_signature
from sklearn.datasets import load_digits

import models
from bench.mlflow_server import free_port
from search.config import ConfigError
from search.deploy import serve
from tests.conftest import run_module

# Ray Serve's detached actors outlive the job that started them: a Ray of its own.
pytestmark = pytest.mark.usefixtures("own_ray")

NAME = "digits-onnx"
NOT_ONNX = "digits-pyfunc"


@dataclass
class Registry:
    """A tracking store with NAME@champion (ONNX) and NOT_ONNX@champion (a plain pyfunc)."""

    tracking_uri: str
    onnx_bytes: bytes  # the registered model, for the reference predictions


def onnx_model() -> bytes:
    """A small CNN on 8x8 greyscale digits, exported with a dynamic batch dimension."""
    torch.manual_seed(0)
    net = models.Normalized(models.build("cnn", 10, 1, 8), [0.3], [0.3]).eval()
    program = torch.onnx.export(
        net, (torch.rand(2, 1, 8, 8),), dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        input_names=["images"], output_names=["logits"], verbose=False)
    return program.model_proto.SerializeToString()


class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    import onnx

    folder = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("serve", (folder / "artifacts").as_uri())
    raw = onnx_model()
    example = images(2)
    session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    signature = infer_signature(example, session.run(None, {"images": example})[0])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment):
            onnx_info = mlflow.onnx.log_model(onnx.load_from_string(raw), name="model",
                                              registered_model_name=NAME, signature=signature,
                                              input_example=example)
            other = mlflow.pyfunc.log_model(name="other", python_model=Constant(),
                                            registered_model_name=NOT_ONNX, pip_requirements=[])
    finally:
        mlflow.set_tracking_uri(previous)
    client.set_registered_model_alias(NAME, "champion", onnx_info.registered_model_version)
    client.set_registered_model_alias(NOT_ONNX, "champion", other.registered_model_version)
    return Registry(uri, raw)


def images(n: int, start: int = 0) -> np.ndarray:
    """Real digits scaled to [0, 1], as (n, 1, 8, 8) float32."""
    digits = load_digits().images[start:start + n]
    return (digits / 16.0).astype(np.float32)[:, None]


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def score(url: str, x: np.ndarray) -> np.ndarray:
    status, answer = post(url, json.dumps({"inputs": x.tolist()}).encode())
    assert status == 200, answer
    assert list(answer) == ["predictions"] and list(answer["predictions"]) == ["logits"]
    return np.asarray(answer["predictions"]["logits"], dtype=np.float32)


@pytest.fixture(scope="module")
def served(registry):
    """The model served on a free port of a local Ray: (base URL, reference session)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    url = serve.start(f"models:/{NAME}@champion", tracking_uri=registry.tracking_uri,
                      port=free_port(), max_batch_size=32)
    yield url, ort.InferenceSession(registry.onnx_bytes, providers=["CPUExecutionProvider"])
    serve.stop()
    if started:
        ray.shutdown()


def test_predictions_match_onnxruntime_and_mlflow(served, registry):
    url, reference = served
    x = images(100)
    expected = reference.run(["logits"], {"images": x})[0]
    got = score(url, x)
    assert got.shape == (100, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()

    # The same body to MLflow's own scoring code (what `mlflow models serve` runs) gives
    # the same JSON: {"predictions": {"logits": [[...], ...]}}.
    from mlflow.pyfunc import scoring_server

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    body = json.dumps({"inputs": x[:3].tolist()})
    theirs = scoring_server.invocations(body, "application/json", model,
                                        model.metadata.get_input_schema())
    assert theirs.status == 200
    theirs = json.loads(theirs.response)
    ours = post(url, body.encode())[1]
    assert ours.keys() == theirs.keys() == {"predictions"}
    assert ours["predictions"].keys() == theirs["predictions"].keys() == {"logits"}
    np.testing.assert_allclose(ours["predictions"]["logits"], theirs["predictions"]["logits"],
                               rtol=1e-5, atol=1e-6)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served):
    url, reference = served
    before = serve.counters()
    barrier = threading.Barrier(16)

    def one(i: int) -> tuple[np.ndarray, np.ndarray]:
        x = images(1 + i % 4, start=10 * i)
        barrier.wait()
        return x, score(url, x)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    for x, got in answers:
        expected = reference.run(["logits"], {"images": x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert (got.argmax(1) == expected.argmax(1)).all()
    after = serve.counters()
    requests, runs = (after[k] - before[k] for k in ("requests", "runs"))
    assert requests == 16
    assert runs < requests, after  # some requests shared an ONNX Runtime run


def test_mlflow_style_errors_and_health(served):
    url, _ = served
    status, answer = post(url, json.dumps({"inputs": [[1.0, 2.0]]}).encode())
    assert status == 400 and "does not match expected shape" in answer["message"]
    status, answer = post(url, b'{"dataframe_split": {}}')
    assert status == 400 and "exactly one of the input fields" in answer["message"]
    status, answer = post(url, b"{nope")
    assert status == 400 and "valid JSON" in answer["message"]
    by_name = json.dumps({"inputs": {"images": images(2).tolist()}}).encode()
    assert post(url, by_name)[0] == 200
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as response:
        assert response.status == 200


def test_more_replicas_than_cpus_is_refused_not_left_pending(served, registry):
    too_many = int(ray.cluster_resources()["CPU"]) + 1
    with pytest.raises(ConfigError, match=f"--replicas {too_many}: needs {too_many} CPUs"):
        serve.start(f"models:/{NAME}@champion", tracking_uri=registry.tracking_uri,
                    port=free_port(), replicas=too_many)


# ---------------------------------------------------------------- bad input, before Ray


def held_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


# (id, MODEL_URI, extra args, what the one line must say); PORT: the held port
CASES = [
    ("unknown model", "models:/no-such-model@champion", [], "no registered model 'no-such-model'"),
    ("no such alias", f"models:/{NAME}@nope", [], f"model '{NAME}' has no alias 'nope'"),
    ("no such version", f"models:/{NAME}/99", [], f"model '{NAME}' has no version 99"),
    ("malformed uri", "runs:/abc/model", [], "MODEL_URI runs:/abc/model: expected models:/"),
    ("not onnx", f"models:/{NOT_ONNX}@champion", [], "is not an ONNX model"),
    ("port in use", f"models:/{NAME}@champion", ["--port", "PORT"], "--port PORT: in use on "
     "127.0.0.1"),
    ("zero replicas", f"models:/{NAME}@champion", ["--replicas", "0"], "--replicas 0: must be"),
]


def refused(*args: str, cwd: Path) -> str:
    """Run `python -m search.serve args`; check it was refused as bad input, fast, before
    Ray started and without writing anything; return its one line."""
    begin = time.monotonic()
    proc = run_module("search.serve", *args, cwd=cwd, timeout=60,
                      env={"MLFLOW_TRACKING_URI": ""})
    took = time.monotonic() - begin
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr  # e.g. "Started a local Ray instance"
    assert took < 20
    assert not list(cwd.iterdir())  # no mlflow.db, no mlruns created here
    return lines[0]


@pytest.mark.parametrize("uri,args,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_before_ray_starts(registry, tmp_path, uri, args,
                                                           expected):
    holder, port = held_port()
    args = [a.replace("PORT", str(port)) for a in args]
    if "--port" not in args:
        args += ["--port", str(free_port())]
    with holder:
        line = refused(uri, "--tracking-uri", registry.tracking_uri, *args, cwd=tmp_path)
    assert expected.replace("PORT", str(port)) in line


def test_no_tracking_database_is_refused_not_created(tmp_path):
    line = refused(f"models:/{NAME}@champion", "--port", str(free_port()), cwd=tmp_path)
    assert f"--tracking-uri sqlite:///{tmp_path / 'mlflow.db'}: no such database" in line


# ---------------------------------------------------------------- bad requests, served


def image_body(pixel: str) -> bytes:
    """One 8x8 image whose 64 pixels are all the JSON text `pixel` (NaN and Infinity are not
    JSON, but Python's parser, and so the server's, reads them)."""
    row = "[" + ", ".join([pixel] * 8) + "]"
    return ('{"inputs": [[[' + ", ".join([row] * 8) + "]]]}").encode()


def inputs_body(x) -> bytes:
    return json.dumps({"inputs": np.asarray(x).tolist()}).encode()


# (id, body, what the one-line message must say)
BAD_REQUESTS = [
    ("malformed JSON", b'{"inputs": [[[0.5,', "valid JSON"),
    ("JSON nested too deeply", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("not MLflow's keys", b'{"dataframe_split": {}}', "exactly one of the input fields"),
    ("a 2-D array", inputs_body([[0.5, 0.5]]), "(1, 2) does not match expected shape"),
    ("3 channels", inputs_body(np.zeros((2, 3, 8, 8))), "(2, 3, 8, 8) does not match"),
    ("9x9 images", inputs_body(np.zeros((2, 1, 9, 9))), "(2, 1, 9, 9) does not match"),
    ("ragged rows", json.dumps({"inputs": [[[[0.5] * 8] * 7 + [[0.5] * 7]]]}).encode(),
     "inhomogeneous shape"),
    ("strings for pixels", image_body('"a"'), 'pixel values must be numbers, got "a"'),
    ("numbers as strings", image_body('"0.5"'), 'pixel values must be numbers, got "0.5"'),
    ("null pixels", image_body("null"), "pixel values must be numbers, got null"),
    ("true for pixels", image_body("true"), "pixel values must be numbers, got true"),
    ("an empty batch", b'{"inputs": []}', "an empty batch"),
    ("NaN", image_body("NaN"), "64 are NaN, Infinity or beyond"),
    ("-Infinity", image_body("-Infinity"), "64 are NaN, Infinity or beyond"),
    ("beyond float32", image_body("1e39"), "in float32's range; 64 are NaN, Infinity or"),
    ("an integer beyond float64", image_body("1" + "0" * 400), "an integer beyond it"),
]


def post_raw(url: str, body: bytes, content_type: str = "application/json"
             ) -> tuple[int, str, str]:
    """(status, media type, body text) of POST /invocations, whatever the status."""
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get_content_type(), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get_content_type(), e.read().decode()


def test_bad_requests_get_400_with_one_line_and_the_replica_keeps_serving(served):
    url, reference = served
    x = images(3, start=50)
    before = score(url, x)
    wrong = []
    for name, body, expected in BAD_REQUESTS:
        status, media_type, text = post_raw(url, body)
        try:
            answer = json.loads(text)
            message = answer["message"]
            ok = (status == 400 and media_type == "application/json"
                  and answer["error_code"] == "BAD_REQUEST" and expected in message
                  and "\n" not in message)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            wrong.append(f"{name}: {status} {media_type} {text[:200]!r}")
    # A body in another media type: 415 and one plain-text line, as MLflow's server answers.
    status, media_type, text = post_raw(url, inputs_body(x), "text/csv")
    if not (status == 415 and media_type == "text/plain" and "\n" not in text.strip()
            and "only supports application/json; got 'text/csv'" in text):
        wrong.append(f"text/csv: {status} {media_type} {text[:200]!r}")
    assert not wrong, "\n".join(wrong)

    after = score(url, x)
    np.testing.assert_array_equal(after, before)
    np.testing.assert_allclose(after, reference.run(["logits"], {"images": x})[0],
                               rtol=1e-5, atol=1e-5)
    # Media types are case-insensitive: the same good request, written another way.
    status, _, text = post_raw(url, inputs_body(x), "Application/JSON; charset=UTF-8")
    assert status == 200, text
    np.testing.assert_array_equal(json.loads(text)["predictions"]["logits"], before)
