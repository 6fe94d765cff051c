"""The user's own model and data: plug-in factories, image folders, data functions, code
shipped to a cluster's workers, and the Python API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from ray.cluster_utils import Cluster

import models
from search import config as config_
from search.config import ConfigError, DataConfig
from search.trial import user_data
from tests.conftest import ROOT, run_module
from tests.test_search import children

NET = '''
from torch import nn


def tiny(num_classes, in_channels, image_size, width=16):
    """A user's network: what the factory contract promises, nothing of models/."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(width * 4, num_classes))


def broken(num_classes, in_channels, image_size):
    raise RuntimeError("no such layer")


def not_a_module(num_classes, in_channels, image_size):
    return "a string"
'''

DATAFN = '''
import torch
from sklearn.datasets import load_digits


def digits(scale=255 / 16):
    bunch = load_digits()
    x = torch.from_numpy(bunch.images).mul(scale).round().clamp(0, 255).to(torch.uint8)
    return x.unsqueeze(1), torch.from_numpy(bunch.target).long()


def floats():
    return torch.rand(10, 1, 8, 8), torch.arange(10) % 2
'''


def write_digits_folder(root, n: int = 1797, size: int = 8, mixed: bool = False) -> None:
    """scikit-learn's digits as PNG files, one folder per class: real images."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for i, (img, label) in enumerate(zip(bunch.images[:n], bunch.target[:n], strict=True)):
        pixels = (img * 255 / 16).round().clip(0, 255).astype(np.uint8)
        side = 2 * size if mixed and i % 2 else size
        picture = Image.fromarray(pixels, mode="L").resize((side, side))
        path = root / f"digit_{label}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)


def search_in(tmp_path, conf: str, *args: str, **kw) -> subprocess.CompletedProcess:
    (tmp_path / "conf.yaml").write_text(conf)
    return run_module("search.run", "conf.yaml", *args, cwd=tmp_path, **kw)


# ---------------------------------------------------------------- models


def test_register_adds_a_name_and_the_factory_gets_the_documented_keywords(monkeypatch):
    # The registry as it was, after: test_models reads the built-in names in this process.
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    seen = {}

    @models.register("test-recorder")
    def recorder(**kwargs):
        seen.update(kwargs)
        return torch.nn.Linear(1, 1)

    assert "test-recorder" in models.names()
    models.build("test-recorder", 7, 3, 12, depth=2)
    assert seen == {"num_classes": 7, "in_channels": 3, "image_size": 12, "depth": 2}


def test_a_plug_in_model_is_searched_registered_and_retrained_from_best_yaml(tmp_path):
    (tmp_path / "mynet.py").write_text(NET)  # beside the config, installed nowhere
    proc = search_in(tmp_path, """
data: {dataset: digits}
model: {name: "mynet:tiny", kwargs: {width: 8}}
train: {epochs: 3, batch_size: 64}
search: {num_samples: 3, max_concurrent: 2}
scheduler: {name: fifo}
mlflow: {register_as: digits-tiny}
""", "--name", "p")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    best_yaml = tmp_path / "runs" / "p" / "best.yaml"
    best = config_.load(best_yaml, schema=config_.TrialConfig)
    assert best.model.name == "mynet:tiny" and best.model.kwargs == {"width": 8}
    assert best.code == [str(tmp_path)]
    # Retrained from elsewhere: the recorded folder makes the plug-in import.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    retrain = run_module("search.train", str(best_yaml), "--out", str(elsewhere / "o"),
                         cwd=elsewhere)
    assert retrain.returncode == 0, retrain.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, kids = children(client, "p")
    winner = next(k for k in kids if k.data.tags["trial_id"]
                  == parents[0].data.tags["best_trial_id"])
    final = json.loads((elsewhere / "o" / "metrics.json").read_text())[-1]["val_acc"]
    assert final == winner.data.metrics["val_acc"]  # the same training, bit for bit
    # The registered champion is an exported graph: it loads without the user's module.
    script = ("import mlflow, torch\n"
              f"mlflow.set_tracking_uri('sqlite:///{tmp_path / 'mlflow.db'}')\n"
              "m = mlflow.pytorch.load_model('models:/digits-tiny@champion')\n"
              "print(tuple(m(torch.rand(2, 1, 8, 8)).shape))\n")
    loaded = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, text=True,
                            capture_output=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert loaded.stdout.strip().endswith("(2, 10)"), loaded.stderr[-2000:]


# ---------------------------------------------------------------- data


def test_an_image_folder_is_decoded_once_and_decoded_again_when_it_changes(tmp_path):
    root = tmp_path / "digits"
    write_digits_folder(root, n=200)
    cfg = DataConfig(dataset="imagefolder", root=str(root), image_size=12)
    x, y, classes = user_data.image_folder(cfg)
    assert x.shape == (200, 1, 12, 12) and x.dtype == torch.uint8 and classes == 10
    [cache] = root.glob(".adamsearch-*.pt")
    stamp = cache.stat().st_mtime_ns
    x2, y2, _ = user_data.image_folder(cfg)  # from the cache: not decoded again
    assert torch.equal(x, x2) and torch.equal(y, y2) and cache.stat().st_mtime_ns == stamp
    write_digits_folder(root, n=210)  # ten more images
    x3, _, _ = user_data.image_folder(cfg)
    assert len(x3) == 210 and not cache.exists()  # the old cache went with the old folder
    rgb = user_data.image_folder(cfg.model_copy(update={"channels": 3}))[0]
    assert rgb.shape == (210, 3, 12, 12)


def test_a_search_runs_on_an_image_folder(tmp_path):
    write_digits_folder(tmp_path / "folder")
    proc = search_in(tmp_path, """
data: {dataset: imagefolder, root: folder}
model: {name: cnn}
train: {epochs: 2, batch_size: 64}
search: {num_samples: 2, max_concurrent: 2}
scheduler: {name: fifo}
""", "--name", "folder")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Real images, decoded right: a trained cnn does well on them. (A data function's
    # search: test_the_python_api_returns_what_the_command_line_finds.)
    best = max(float(line.split("val_acc ")[1].split()[0])
               for line in proc.stdout.splitlines() if "completed 2 epochs" in line)
    assert best > 0.8


# ---------------------------------------------------------------- bad input

BAD = {
    "model does not import": ('model: {name: "nomodule:tiny"}',
                              "model.name: model 'nomodule:tiny': cannot import nomodule"),
    "factory raises": ('model: {name: "mynet:broken"}',
                       "the factory raised RuntimeError: no such layer"),
    "factory returns no module": ('model: {name: "mynet:not_a_module"}',
                                  "the factory returned str, not a torch.nn.Module"),
    "factory missing": ('model: {name: "mynet:absent"}', "mynet has no callable 'absent'"),
    "searched argument the factory lacks": (
        'model: {name: "mynet:tiny"}\nspace: {model.kwargs.depth: {choices: [1, 2]}}',
        "space.model.kwargs.depth 1: model 'mynet:tiny': the factory raised TypeError"),
    "searched argument breaks the factory": (
        'model: {name: "mynet:tiny"}\nspace: {model.kwargs.width: {choices: [8, wide]}}',
        "space.model.kwargs.width 'wide': model 'mynet:tiny': the factory raised TypeError"),
    "model name is no import path": ('model: {name: "my-net"}', "unknown model 'my-net'"),
    "empty image folder": ("data: {dataset: imagefolder, root: empty}",
                           "Found no valid file for the classes class_a"),
    "one class": ("data: {dataset: imagefolder, root: oneclass}",
                  "images of one class only ('digit_0')"),
    "mixed sizes": ("data: {dataset: imagefolder, root: mixed}", "images of different sizes"),
    "no such folder": ("data: {dataset: imagefolder, root: nowhere}", "no such folder"),
    "data function does not import": ('data: {dataset: "nodata:digits"}',
                                      "data.dataset 'nodata:digits': cannot import it"),
    "data function returns floats": ('data: {dataset: "mydata:floats"}',
                                     "images must be uint8 (N, C, H, W), got torch.float32"),
    "py_modules names nothing": ("ray: {py_modules: [no_such_package]}",
                                 "ray.py_modules: 'no_such_package' is neither a folder"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_user_code_or_data_exits_2_with_one_line_before_ray(tmp_path, case):
    (tmp_path / "mynet.py").write_text(NET)
    (tmp_path / "mydata.py").write_text(DATAFN)
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    write_digits_folder(tmp_path / "oneclass", n=1)
    write_digits_folder(tmp_path / "mixed", n=30, mixed=True)
    refused_before_ray(tmp_path, *BAD[case])


def refused_before_ray(tmp_path, text: str, expected: str) -> None:
    """A search of `text` (a cnn on digits for 2 epochs, unless it names its model) exits 2
    with one line containing `expected`, no traceback, and writes nothing."""
    conf = "train: {epochs: 2}\nmodel: {name: cnn}\n" + text + "\n"
    if text.startswith("model:"):
        conf = "train: {epochs: 2}\n" + text + "\n"
    before = set(tmp_path.rglob("*"))
    proc = search_in(tmp_path, conf, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert set(tmp_path.rglob("*")) - before == {tmp_path / "conf.yaml"} - before  # nothing


def test_a_config_error_from_python_is_the_same_line(tmp_path):
    from search import run_search

    (tmp_path / "conf.yaml").write_text("model: {name: vgg}\n")
    with pytest.raises(ConfigError, match="model.name: unknown model 'vgg'"):
        run_search(tmp_path / "conf.yaml")


# ---------------------------------------------------------------- the cluster


def test_a_plug_in_reaches_the_workers_of_a_cluster_that_lack_it(tmp_path):
    # The module lives in conf/, which only the driver can import (from beside the config);
    # the worker nodes start with the test's environment, and the driver runs from run/.
    (tmp_path / "conf").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "conf" / "mynet.py").write_text(NET)
    (tmp_path / "conf" / "conf.yaml").write_text("""
data: {dataset: digits}
model: {name: "mynet:tiny"}
train: {epochs: 30, batch_size: 64}
search: {num_samples: 3, max_concurrent: 3}
scheduler: {name: fifo}
""")
    # 30 epochs (several seconds a trial): long enough that the three trials run at once,
    # one a node, rather than one after another in the first warm process (reuse_actors).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        proc = run_module("search.run", str(tmp_path / "conf" / "conf.yaml"), "--name", "c",
                          "--address", cluster.address, "--storage-path", str(tmp_path / "runs"),
                          cwd=tmp_path / "run", timeout=600)
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 trials: 3 completed" in proc.stdout
    _, kids = children(MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"), "c")
    assert len({k.data.tags["node_id"] for k in kids}) >= 2  # ran on several nodes


# ---------------------------------------------------------------- the Python API


def test_the_python_api_returns_what_the_command_line_finds(tmp_path, monkeypatch):
    from search import SearchResult, run_search

    # The data come from a data function of the user's (mydata.py beside the config).
    (tmp_path / "mydata.py").write_text(DATAFN)
    conf = """
data: {dataset: "mydata:digits"}
model: {name: mlp}
train: {epochs: 2, batch_size: 64}
search: {num_samples: 3, max_concurrent: 1, seed: 3}
scheduler: {name: fifo}
mlflow: {register_as: digits-api}
"""
    proc = search_in(tmp_path, conf, "--name", "cli")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli_best = config_.load(tmp_path / "runs" / "cli" / "best.yaml", schema=config_.TrialConfig)
    monkeypatch.chdir(tmp_path)
    result = run_search("conf.yaml", ["search.num_samples=3"], name="api")
    assert isinstance(result, SearchResult) and result.ok
    assert result.best_config.optimizer == cli_best.optimizer  # same seed, same winner
    assert result.champion_uri == "models:/digits-api@champion"
    assert len(result.trials) == 3 and list(result.trials["outcome"]) == ["completed"] * 3
    assert result.trials.iloc[0]["trial_id"] == result.best["trial_id"]
    assert result.best["value"] > 0.8  # the function's digits are real images, read right
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.parent_run_id)
    assert run.data.tags["best_trial_id"] == result.best["trial_id"]


# ---------------------------------------------------------------- round three: does it fit

# Factories that build, but whose model does not fit the data (or does not run at all).
BADNET = '''
from torch import nn


def head(num_classes, in_channels, image_size, classes=None, width=8):
    """A small network with `classes` logits (the dataset's own number by default)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(width, classes or num_classes))


class Then(nn.Module):
    """`head`'s logits, then `how` of them."""

    def __init__(self, how, **kwargs):
        super().__init__()
        self.net, self.how = head(**kwargs), how

    def forward(self, x):
        return self.how(self.net(x))


def pair(**kwargs):
    return Then(lambda out: (out, out), **kwargs)


def column(**kwargs):
    return Then(lambda out: out.unsqueeze(-1), **kwargs)  # (N, C, 1)


def flat(**kwargs):
    return Then(lambda out: out[:, 0], **kwargs)  # (N,)


def nan(**kwargs):
    return Then(lambda out: out * float("nan"), **kwargs)


def for_mnist(num_classes, in_channels, image_size):
    """Written for 28x28 images: digits' 8x8 do not fit its first layer."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, num_classes))


def no_weights(num_classes, in_channels, image_size):
    """(N, num_classes) out of nothing to train."""
    return nn.Sequential(nn.AdaptiveAvgPool2d((1, num_classes)), nn.Flatten())
'''

BADDATA = '''
import torch


def nothing():
    return torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)


def empty_dataset():
    return torch.utils.data.TensorDataset(torch.zeros(0, 1, 8, 8, dtype=torch.uint8),
                                          torch.zeros(0, dtype=torch.int64))


def two():
    return torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1])
'''

DOES_NOT_FIT = {
    "3 logits for 10 classes": (
        'model: {name: "badnet:head", kwargs: {classes: 3}}',
        "model.name: model 'badnet:head': output shape (4, 3) for a batch (4, 1, 8, 8); "
        "expected (4, 10), a logit for each of the dataset's 10 classes"),
    "logits in a tuple": ('model: {name: "badnet:pair"}',
                          "model.name: model 'badnet:pair': the forward returned tuple, "
                          "not a tensor of logits (4, 10)"),
    "logits (N, C, 1)": ('model: {name: "badnet:column"}', "output shape (4, 10, 1)"),
    "logits (N,)": ('model: {name: "badnet:flat"}', "output shape (4,)"),
    "NaN logits": ('model: {name: "badnet:nan"}',
                   "model.name: model 'badnet:nan': NaN or infinite logits on a batch "
                   "(4, 1, 8, 8), before any training"),
    "forward raises": ('model: {name: "badnet:for_mnist"}',
                       "model.name: model 'badnet:for_mnist': the forward on a batch "
                       "(4, 1, 8, 8) raised RuntimeError: mat1 and mat2 shapes cannot be "
                       "multiplied"),
    "searched width 0 breaks the forward": (
        'model: {name: "badnet:head"}\nspace: {model.kwargs.width: {choices: [8, 0]}}',
        "space.model.kwargs.width 0: model 'badnet:head': the forward on a batch "
        "(4, 1, 8, 8) raised RuntimeError"),
    "searched bound gives the wrong head": (
        'model: {name: "badnet:head"}\n'
        'space: {model.kwargs.classes: {low: 2, high: 10, int: true}}',
        "space.model.kwargs.classes 2: model 'badnet:head': output shape (4, 2)"),
    "nothing to train": ('model: {name: "badnet:no_weights"}',
                         "model.name: model 'badnet:no_weights': no parameters to train"),
    "data function with no samples": ('data: {dataset: "baddata:nothing"}',
                                      "data.dataset 'baddata:nothing': no samples: "
                                      "images (0, 1, 8, 8)"),
    "data function's Dataset with no samples": (
        'data: {dataset: "baddata:empty_dataset"}',
        "data.dataset 'baddata:empty_dataset': the Dataset has no samples"),
    "no training split left": (
        'data: {dataset: "baddata:two", val_fraction: 0.8}',
        "data.val_fraction 0.8: takes 2 of the 2 samples of data.dataset 'baddata:two' for "
        "validation, leaving none to train on"),
    "images that do not decode": (
        "data: {dataset: imagefolder, root: broken}",
        "broken: digit_3/bad.png does not decode (UnidentifiedImageError: cannot identify "
        "image file), and 1 more file does not"),
}


@pytest.mark.parametrize("case", DOES_NOT_FIT)
def test_a_model_or_data_that_does_not_fit_exits_2_with_one_line_before_ray(tmp_path, case):
    (tmp_path / "badnet.py").write_text(BADNET)
    (tmp_path / "baddata.py").write_text(BADDATA)
    write_digits_folder(tmp_path / "broken", n=30)
    (tmp_path / "broken" / "digit_3" / "bad.png").write_text("not a picture")
    png = (tmp_path / "broken" / "digit_5" / "5.png").read_bytes()
    (tmp_path / "broken" / "digit_5" / "cut.png").write_bytes(png[: len(png) // 2])
    refused_before_ray(tmp_path, *DOES_NOT_FIT[case])
