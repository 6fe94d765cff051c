"""`python -m search.deploy` on the shared search's champion: ONNX export, int8, the
registry, and real servers (`mlflow models serve`, Ray Serve) answering real images."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import mlflow
import numpy as np
import pytest
import torch
import yaml

from bench.mlflow_server import START_DEADLINE_S, free_port
from search.config import DataConfig, SearchConfig
from search.trial import data
from tests.conftest import run_module

# Ray Serve's detached actors outlive the job that started them: a Ray of its own.
pytestmark = pytest.mark.usefixtures("own_ray")

ONNX = "models:/digits-test-onnx@champion"
INT8 = "digits-test-onnx-int8"


@pytest.fixture(scope="module")
def deployed(search):
    """The shared search's champion deployed once, with int8 asked for."""
    cwd, _, client = search
    proc = run_module("search.deploy", "runs/e2e", "--set", "deploy.int8=true",
                      "--set", "deploy.rounds=20", cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, proc.stdout, client


@pytest.fixture(scope="module")
def validation() -> tuple[np.ndarray, np.ndarray]:
    """The search's validation images scaled to [0, 1], and their labels."""
    ds = data.load(DataConfig(dataset="digits", val_fraction=0.2))
    return (ds.val.x.float() / 255).numpy(), ds.val.y.numpy()


def champion_run(client):
    version = client.get_model_version_by_alias("digits-test", "champion")
    return version, client.get_run(version.run_id)


def test_the_onnx_version_predicts_as_the_pytorch_champion(deployed, validation):
    cwd, stdout, client = deployed
    images, labels = validation
    version, run = champion_run(client)
    assert str(version.version) == "1"  # the PyTorch champion stays as it is
    # mlflow.pytorch.load_model gives the exported graph: called as is, no .eval() (README)
    graph = mlflow.pytorch.load_model("models:/digits-test@champion")
    with pytest.raises(NotImplementedError):
        graph.eval()
    with torch.no_grad():
        eager = graph(torch.from_numpy(images)).numpy()
    onnx = mlflow.pyfunc.load_model(ONNX).predict(images)["logits"]  # by output name
    assert (onnx.argmax(1) == eager.argmax(1)).mean() >= 0.995
    assert abs((onnx.argmax(1) == labels).mean() - run.data.metrics["val_acc"]) <= 0.005
    info = mlflow.models.get_model_info(ONNX)
    assert info.signature is not None and info.saved_input_example_info is not None
    onnx_version = client.get_model_version_by_alias("digits-test-onnx", "champion")
    tags = onnx_version.tags
    assert tags["source_trial"] == run.data.tags["trial_id"]
    assert tags["source_model"] == "digits-test/1"
    assert float(tags["p50_ms_batch1"]) > 0
    assert abs(float(tags["val_acc_onnx"]) - run.data.metrics["val_acc"]) <= 0.005
    assert onnx_version.description.startswith("onnx export of digits-test version 1")
    line = re.search(r"^onnx: .*max \|logit diff\| (\S+), top-1 agreement (\S+),", stdout, re.M)
    assert line and float(line[1]) < 1e-3 and float(line[2]) >= 0.995, stdout


def test_int8_is_registered_within_the_accuracy_bound_or_refused(deployed, validation):
    _, stdout, client = deployed
    images, labels = validation
    found = re.search(r"^onnx-int8: .* val_acc (\S+) \(pytorch (\S+)\)", stdout, re.M)
    assert found, stdout
    drop = (float(found[2]) - float(found[1])) * 100
    registered = [m.name for m in client.search_registered_models()]
    if drop > 0.5:
        assert "onnx-int8: refused" in stdout and INT8 not in registered
    else:
        assert INT8 in registered
        int8 = mlflow.pyfunc.load_model(f"models:/{INT8}@champion").predict(images)["logits"]
        assert (float(found[2]) - (int8.argmax(1) == labels).mean()) * 100 <= 0.5


def test_the_latency_table_is_printed_and_logged_to_the_search(deployed):
    _, stdout, client = deployed
    rows = {line.split()[0] for line in stdout.splitlines() if line.startswith("  ")}
    assert {"pytorch", "torch.compile", "onnx"} <= rows, stdout
    _, run = champion_run(client)
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["deploy_onnx_p50_ms"] > 0
    assert parent.data.metrics["deploy_pytorch_images_per_s"] > 0
    table = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/deploy/latency.txt")
    assert table.splitlines()[0].split()[:3] == ["runtime", "p50", "ms"]


def post(url: str, body: dict, timeout: float = 30) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(url: str, proc: subprocess.Popen, timeout: float = START_DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {timeout:.0f} s")


def test_mlflow_models_serve_answers_real_images_with_the_same_predictions(deployed,
                                                                           validation):
    cwd, _, _ = deployed
    images = validation[0][:32]
    expected = mlflow.pyfunc.load_model(ONNX).predict(images)["logits"]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", ONNX, "--env-manager",
         "local", "--host", "127.0.0.1", "--port", str(port)],
        # MLflow starts `uvicorn` by name: the environment's bin folder must be on PATH.
        cwd=cwd, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
                      "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", proc)
        answer = post(f"http://127.0.0.1:{port}/invocations", {"inputs": images.tolist()})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    served = np.asarray(answer["predictions"]["logits"])
    assert served.shape == expected.shape
    assert (served.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)


def test_ray_serve_answers_the_same_request_with_the_same_predictions(deployed, validation):
    from search.deploy import serve

    cwd, _, _ = deployed
    images = validation[0][:32]
    expected = mlflow.pyfunc.load_model(ONNX).predict(images)["logits"]
    url = serve.start(ONNX, port=free_port(), tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    try:
        answer = post(f"{url}/invocations", {"inputs": images.tolist()})
    finally:
        serve.stop()
    served = np.asarray(answer["predictions"]["logits"])
    assert (served.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- bad input


def no_champion(cwd) -> str:
    folder = cwd / "runs" / "no-champion"
    folder.mkdir(parents=True, exist_ok=True)
    raw = SearchConfig(name="no-champion").model_dump(mode="json")
    (folder / "search.yaml").write_text(yaml.safe_dump(raw))
    return "runs/no-champion"


BAD = {
    "unknown model": (["models:/nope@champion"], "no registered model 'nope'"),
    "unknown alias": (["models:/digits-test@gone"], "model 'digits-test' has no alias 'gone'"),
    "unknown version": (["models:/digits-test/99"], "model 'digits-test' has no version 99"),
    "not a model URI": (["models:/digits-test"], "expected models:/NAME@alias"),
    "no champion": ([no_champion], "no champion: the search registered no model"),
    "not a search folder": (["runs"], "SOURCE runs: neither a search folder"),
    "bad setting": (["runs/e2e", "--set", "deploy.int8=maybe"], "deploy.int8: Input should"),
    "not a deploy setting": (["runs/e2e", "--set", "train.epochs=3"], "train: unknown field"),
    "no such database": (["models:/digits-test@champion", "--tracking-uri",
                          "sqlite:///nowhere.db"], "sqlite:///nowhere.db: no such database"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_registers_nothing(search, case):
    cwd, _, client = search
    args, message = BAD[case]
    args = [a(cwd) if callable(a) else a for a in args]
    before = {(v.name, v.version) for v in client.search_model_versions()}
    deploys = set((cwd / "runs" / "deploy").glob("*"))
    t0 = time.monotonic()
    proc = run_module("search.deploy", *args, cwd=cwd, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert time.monotonic() - t0 < 30
    assert {(v.name, v.version) for v in client.search_model_versions()} == before
    assert set((cwd / "runs" / "deploy").glob("*")) == deploys
    assert not (cwd / "nowhere.db").exists()
