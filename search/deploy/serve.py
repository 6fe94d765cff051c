"""Serve a registered ONNX model over HTTP with Ray Serve: `python -m search.serve MODEL_URI`.

The HTTP interface is MLflow's scoring server's (`mlflow models serve`), so a client of one
works with the other: POST /invocations with `{"inputs": IMAGES}` (or `"instances"`, or
`{"inputs": {"images": IMAGES}}`) answers `{"predictions": {"logits": [[...], ...]}}`, one
entry per model output; GET /ping and /health answer 200, /version MLflow's version.
What Ray Serve adds: N replicas, each with its own ONNX Runtime session, and batching:
concurrent requests to a replica are concatenated into one ONNX Runtime run.

Everything that can be wrong with the command line (the model URI, the port, the counts)
is checked before Ray starts, in a few seconds, and reported as one line (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.config import ConfigError
from search.record.store import (
    check_tracking_uri,
    default_tracking_uri,
    existing_store,
    mlflow_settings,
    registered_version,
)

if TYPE_CHECKING:
    import numpy as np
    from starlette.requests import Request
    from starlette.responses import Response

APP_NAME = "search-serve"
BATCH_WAIT_S = 0.005  # how long a replica waits for more requests to join a batch
ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
               "tensor(float16)": "float16", "tensor(uint8)": "uint8",
               "tensor(int32)": "int32", "tensor(int64)": "int64"}
INPUT_KEYS = ("inputs", "instances")  # MLflow's keys for tensor input
JSON = "application/json"
MAX_MESSAGE = 300  # an error message longer than this is cut: it may quote the client's input

_ray_started_here = False  # whether start() initialised Ray, so stop() shuts it down


# ---------------------------------------------------------------- checks, before Ray


@dataclass(frozen=True)
class Target:
    """The registered model version to serve, pinned: replicas load this exact version's
    artifacts even if the alias moves while they start."""

    model_uri: str  # as given, e.g. models:/digits-cnn-onnx@champion
    version: str
    location: str  # where the version's artifacts are (a path, s3://, mlflow-artifacts:/...)
    tracking_uri: str
    example_path: str | None  # the logged serving_input_example.json, for the curl example


def check_counts(replicas: int, replica_cpus: int, max_batch_size: int) -> None:
    """Counts that must be at least 1."""
    for flag, value in (("--replicas", replicas), ("--replica-cpus", replica_cpus),
                        ("--max-batch-size", max_batch_size)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be at least 1")


def check_port(host: str, port: int) -> None:
    """Refuse a port that Serve's HTTP proxy could not bind, by binding it now, as uvicorn
    will (SO_REUSEADDR: a port in TIME_WAIT is free, one with a listener is not)."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: not a port number (1 to 65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--host {host}: cannot resolve it ({e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"--port {port}: in use on {host}") from None
            raise ConfigError(f"--host {host} --port {port}: cannot bind ({e.strerror})") from None


def download(location: str, path: str, tracking_uri: str) -> str:
    """A model's artifact (or, for path "", all of them) as a local path. From the version's
    artifact location, not a models:/ URI: MLflow 3.17 resolves those in the default
    registry (./mlflow.db), whatever tracking and registry URIs it is given."""
    from mlflow.artifacts import download_artifacts

    uri = f"{location.rstrip('/')}/{path}" if path else location
    return download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)


def resolve_model(model_uri: str, tracking_uri: str) -> Target:
    """The registered version `model_uri` names, checked to be an ONNX model, from the
    registry's records and its MLmodel file only (fast: the model is not loaded)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    client, version = registered_version(model_uri, tracking_uri, f"MODEL_URI {model_uri}")
    name = version.name
    try:
        location = client.get_model_version_download_uri(name, version.version)
        meta = Model.load(download(location, "MLmodel", tracking_uri))
    except (MlflowException, OSError) as e:
        raise ConfigError(f"MODEL_URI {model_uri}: version {version.version} has no readable "
                          f"MLmodel ({type(e).__name__})") from None
    if "onnx" not in meta.flavors:
        flavors = ", ".join(f for f in meta.flavors if f != "python_function") or "none"
        raise ConfigError(f"MODEL_URI {model_uri}: version {version.version} is not an ONNX "
                          f"model (flavors: {flavors}); export it first: python -m search.deploy")
    return Target(model_uri, str(version.version), location, tracking_uri,
                  _example_path(meta, location, tracking_uri))


def _example_path(meta: Any, location: str, tracking_uri: str) -> str | None:
    """The model's logged request example (`serving_input_example.json`), if it has one."""
    from mlflow.exceptions import MlflowException

    relative = (meta.saved_input_example_info or {}).get("serving_input_path")
    if not relative:
        return None
    try:
        return download(location, relative, tracking_uri)
    except (MlflowException, OSError):
        return None


def check(model_uri: str, *, replicas: int = 1, replica_cpus: int = 1, host: str = "127.0.0.1",
          port: int = 8000, tracking_uri: str | None = None, max_batch_size: int = 64,
          bind_here: bool = True) -> Target:
    """Everything about the request that can be checked without Ray, cheapest first."""
    check_counts(replicas, replica_cpus, max_batch_size)
    if bind_here:
        check_port(host, port)
    uri = tracking_uri or default_tracking_uri()
    try:
        check_tracking_uri(uri, register=True)
    except ConfigError as e:
        raise ConfigError(str(e).replace("mlflow.tracking_uri", "--tracking-uri", 1)) from None
    mlflow_settings()
    return resolve_model(model_uri, existing_store(uri))


# ---------------------------------------------------------------- the deployment


def _response(content: Any, status: int = 200, media_type: str = JSON) -> Response:
    from starlette.responses import Response

    text = content if isinstance(content, str) else json.dumps(content)
    return Response(content=text, status_code=status, media_type=media_type)


def _error(message: str, status: int = 400, code: str = "BAD_REQUEST") -> Response:
    """An error as MLflow's scoring server writes one; the message on one line."""
    line = " ".join(message.split())
    if len(line) > MAX_MESSAGE:
        line = line[:MAX_MESSAGE - 3] + "..."
    return _response({"error_code": code, "message": line}, status)


class BadInput(ValueError):
    """A request body this model cannot score; the message is for the client."""


class OnnxModel:
    """One replica: the model's ONNX Runtime session, behind MLflow's scoring protocol.

    Requests are parsed and checked one by one (a bad one fails alone), then batched:
    `serve.batch` gathers concurrent requests, up to `max_batch_size` images, into one
    ONNX Runtime run, which runs in a thread so the next batch can gather meanwhile.
    """

    def __init__(self, location: str, tracking_uri: str, max_batch_size: int) -> None:
        from ray import serve

        self.session = _open_session(location, tracking_uri)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.dtype = ONNX_DTYPES[first.type]
        self.input_shape = first.shape  # ints, or names/None for dynamic dims
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.max_batch_size = max_batch_size
        self.stats = {"requests": 0, "images": 0, "runs": 0}
        self.batched = serve.batch(max_batch_size=max_batch_size,
                                   batch_wait_timeout_s=BATCH_WAIT_S,
                                   batch_size_fn=_count_images)(self._run_batch)

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path.rstrip("/"), request.method
        if path == "/invocations" and method == "POST":
            return await self.invocations(request)
        if path in ("/ping", "/health") and method == "GET":
            return _response("\n")
        if path == "/version" and method == "GET":
            import mlflow

            return _response(mlflow.__version__)
        return _error(f"no route {method} {request.url.path}; POST /invocations, GET /ping",
                      404, "ENDPOINT_NOT_FOUND")

    async def invocations(self, request: Request) -> Response:
        """Score one request: MLflow's request body in, MLflow's response body out."""
        mime = (request.headers.get("content-type") or JSON).split(";")[0].strip()
        if mime.lower() != JSON:  # media types are case-insensitive (RFC 9110)
            return _response(f"This predictor only supports {JSON}; got {mime!r}.", 415,
                             "text/plain")
        try:
            images = self.parse(await request.body())
        except BadInput as e:
            return _error(str(e))
        except Exception as e:  # noqa: BLE001  a body no check foresaw: still one line, a 4xx
            return _error(f"Invalid input: {type(e).__name__}: {e}")
        try:
            outputs = await (self.batched(images) if len(images) <= self.max_batch_size
                             else self._run_alone(images))
        except Exception as e:  # noqa: BLE001  the client gets the error line, not a traceback
            return _error(f"inference failed: {type(e).__name__}: {e}", 500, "INTERNAL_ERROR")
        self.stats["requests"] += 1
        self.stats["images"] += len(images)
        named = zip(self.output_names, outputs, strict=True)
        return _response({"predictions": {name: out.tolist() for name, out in named}})

    def parse(self, body: bytes) -> np.ndarray:
        """The images in a request body, as the model's input type, shape checked."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInput(f"Invalid input. Ensure that input is a valid JSON formatted "
                           f"string. Error: {e}") from None
        except RecursionError:
            raise BadInput("Invalid input: the JSON is nested too deeply to read") from None
        keys = [k for k in INPUT_KEYS if isinstance(payload, dict) and k in payload]
        if len(keys) != 1:
            raise BadInput("The input must be a JSON dictionary with exactly one of the input "
                           f"fields {set(INPUT_KEYS)}")
        data = payload[keys[0]]
        if isinstance(data, dict):  # {"inputs": {"images": ...}}: by the input's name
            if set(data) != {self.input_name}:
                raise BadInput(f"expected one input named {self.input_name!r}, got "
                               f"{sorted(data)}")
            data = data[self.input_name]
        images = pixels(data, keys[0], self.dtype)
        expected = tuple(d if isinstance(d, int) else -1 for d in self.input_shape)
        if images.ndim != len(expected) or len(images) == 0 or any(
                e not in (-1, got) for e, got in zip(expected[1:], images.shape[1:], strict=True)):
            raise BadInput(f"Shape of input {images.shape} does not match expected shape "
                           f"{expected}")
        return images

    async def _run_batch(self, batch: list[np.ndarray]) -> list[list[np.ndarray]]:
        """One ONNX Runtime run for all the requests' images; each request's rows back."""
        import numpy as np

        if len({images.shape[1:] for images in batch}) > 1:  # dynamic H, W that differ
            return [await self._run_alone(images) for images in batch]
        outputs = await self._run_alone(np.concatenate(batch))
        bounds = np.cumsum([len(images) for images in batch])[:-1]
        per_output = [np.split(out, bounds) for out in outputs]
        return [list(rows) for rows in zip(*per_output, strict=True)]

    async def _run_alone(self, images: np.ndarray) -> list[np.ndarray]:
        self.stats["runs"] += 1
        return await asyncio.to_thread(self.session.run, self.output_names,
                                       {self.input_name: images})

    def counters(self) -> dict[str, int]:
        """Requests, images and ONNX Runtime runs so far: runs < requests means batching."""
        return dict(self.stats)


def pixels(data: Any, key: str, dtype: str) -> np.ndarray:
    """`data` as an array of `dtype`, refused unless it is a non-empty nested list of finite
    JSON numbers. Not `np.asarray(data, dtype)`: that reads "0.5" and null (as NaN) as pixels,
    and NaN in gives NaN logits out, which is not JSON."""
    import numpy as np

    if isinstance(data, list) and not data:
        raise BadInput(f"{key}: an empty batch; send at least one image")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError) as e:  # ragged, or nested deeper than numpy's dimensions
        raise BadInput(f"{key}: not an array: {e}") from None
    if values.dtype.kind not in "iuf":
        bad = _first_non_number(data)
        if bad is not None or values.dtype.kind != "O":
            raise BadInput(f"{key}: pixel values must be numbers, got {bad}")
        try:  # only integers, some beyond int64
            values = values.astype(np.float64)
        except OverflowError:
            raise BadInput(f"{key}: pixel values must be finite numbers in {dtype}'s range; "
                           f"got an integer beyond it") from None
    with np.errstate(over="ignore", invalid="ignore"):
        images = values.astype(dtype)
    finite = np.isfinite(values) & np.isfinite(images)
    if not finite.all():
        raise BadInput(f"{key}: pixel values must be finite numbers in {dtype}'s range; "
                       f"{finite.size - finite.sum()} are NaN, Infinity or beyond it")
    return images


def _first_non_number(data: Any) -> str | None:
    """The first leaf of nested lists, in reading order, that is not a JSON number, as the
    client wrote it (null, true, "0.5", ...); None if every leaf is a number."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        elif isinstance(value, bool) or not isinstance(value, int | float):
            text = json.dumps(value)
            return text if len(text) <= 40 else text[:37] + "..."
    return None


def _count_images(batch: list[np.ndarray]) -> int:
    """A batch's size for `serve.batch`: images, not requests."""
    return sum(len(images) for images in batch)


def _open_session(location: str, tracking_uri: str) -> Any:
    """Download the model's artifacts and open them in ONNX Runtime, with as many threads
    as CPUs Ray gave this replica (they would fight over the cores otherwise)."""
    import onnxruntime as ort
    import ray
    from mlflow.models import Model

    folder = Path(download(location, "", tracking_uri))
    data = Model.load(folder / "MLmodel").flavors["onnx"]["data"]
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(cpus))
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / data), options,
                                   providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type not in ONNX_DTYPES:
        raise ValueError(f"{location}: expected one tensor input, got "
                         f"{[(i.name, i.type) for i in inputs]}")
    return session


# ---------------------------------------------------------------- start and stop


def launch(target: Target, *, replicas: int = 1, replica_cpus: int = 1,
           host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 64) -> str:
    """Deploy the checked target on Serve (Ray initialised already); the base URL."""
    import ray
    from ray import serve

    cpus = ray.cluster_resources().get("CPU", 0)
    if replicas * replica_cpus > cpus:
        raise ConfigError(f"--replicas {replicas}: needs {replicas * replica_cpus} CPUs "
                          f"({replica_cpus} a replica), the Ray cluster has {cpus:g}")
    # HeadOnly: one HTTP proxy, on this (head) node, at host:port: the URL printed.
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port},
                logging_config={"log_level": "WARNING"})
    deployment = serve.deployment(
        OnnxModel, name="OnnxModel", num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus},
        max_ongoing_requests=2 * max_batch_size,  # room for a batch to gather while one runs
    )
    app = deployment.bind(target.location, target.tracking_uri, max_batch_size)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/",
                  logging_config={"log_level": "WARNING", "enable_access_log": False})
    except RuntimeError as e:  # a replica failed to start: the model did not load
        from search.record.tracking import error_line

        stop()
        raise ConfigError(f"MODEL_URI {target.model_uri}: replicas failed to start: "
                          f"{error_line(e)}") from None
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"


def _init_ray(address: str | None) -> None:
    """Join the cluster at `address`, or start Ray on this machine (then stop() ends it)."""
    global _ray_started_here
    import ray

    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
        _ray_started_here = True


def start(model_uri: str, *, replicas: int = 1, host: str = "127.0.0.1", port: int = 8000,
          tracking_uri: str | None = None, max_batch_size: int = 64,
          replica_cpus: int = 1) -> str:
    """Check, then serve `model_uri` at host:port and return the base URL (POST
    {url}/invocations). Uses the Ray this process is connected to, or starts a local one."""
    import ray

    target = check(model_uri, replicas=replicas, replica_cpus=replica_cpus, host=host,
                   port=port, tracking_uri=tracking_uri, max_batch_size=max_batch_size)
    if not ray.is_initialized():
        _init_ray(None)
    return launch(target, replicas=replicas, replica_cpus=replica_cpus, host=host, port=port,
                  max_batch_size=max_batch_size)


def stop() -> None:
    """Take the app down. If start() started Ray, shut Serve and Ray down; on a Ray that
    was running already, shut Serve down only if no other application is left on it."""
    global _ray_started_here
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    if not ray.is_initialized():
        return
    if _ray_started_here:
        serve.shutdown()
        ray.shutdown()
        _ray_started_here = False
        return
    try:
        serve.delete(APP_NAME)
    except RayServeException:  # Serve is not running: nothing to take down
        return
    if not serve.status().applications:
        serve.shutdown()


def counters() -> dict[str, int]:
    """One replica's counters (requests, images, ONNX Runtime runs), through the app's
    handle: for tests and a quick look at how well requests batch."""
    from ray import serve

    return serve.get_app_handle(APP_NAME).counters.remote().result()


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.serve", description=__doc__.split("\n")[0])
    p.add_argument("model_uri", metavar="MODEL_URI",
                   help="models:/NAME@ALIAS or models:/NAME/VERSION of an MLflow ONNX model")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    p.add_argument("--replica-cpus", type=int, default=1,
                   help="CPUs a replica reserves and ONNX Runtime threads it runs (default 1)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                   "or sqlite:///mlflow.db in the working directory)")
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="most images a replica runs at once (default 64)")
    p.add_argument("--address", help="join this Ray cluster (auto, HOST:PORT, ray://...); "
                   "default: start Ray on this machine")
    return p.parse_args(argv)


def curl_example(url: str, target: Target) -> str:
    body = f"@{target.example_path}" if target.example_path else "'{\"inputs\": IMAGES}'"
    return (f"curl -s {url}/invocations -H 'Content-Type: application/json' -d {body}")


def main(argv: list[str] | None = None) -> int:
    """Check, start Ray and Serve, print where, serve until Ctrl-C (or SIGTERM), clean up."""
    args = parse_args(argv)
    target = check(args.model_uri, replicas=args.replicas, replica_cpus=args.replica_cpus,
                   host=args.host, port=args.port, tracking_uri=args.tracking_uri,
                   max_batch_size=args.max_batch_size,
                   bind_here=not (args.address or "").startswith("ray://"))
    import ray.serve  # noqa: F401  sets its logger up on import: quiet it after

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        _init_ray(args.address)
        # After ray.init, which sets its own (sys.exit) handler: `kill` stops as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        url = launch(target, replicas=args.replicas, replica_cpus=args.replica_cpus,
                     host=args.host, port=args.port, max_batch_size=args.max_batch_size)
        print(f"serving {target.model_uri} (version {target.version}, {args.replicas} "
              f"replica{'s' if args.replicas > 1 else ''}) at {url}; try: "
              f"{curl_example(url, target)}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        stop()
    return 0
