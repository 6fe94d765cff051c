"""Bad input to `python -m search.run`: exit 2, one line naming the problem, no traceback,
nothing created in the storage path or in MLflow."""

from __future__ import annotations

import time

import pytest
from ray.cluster_utils import Cluster

from bench.mlflow_server import free_port
from search.cli import run_main
from search.run import main
from tests.conftest import run_module

GOOD = "data: {dataset: digits}\nmodel: {name: mlp}\ntrain: {epochs: 2}\n"


PORT = free_port()

# (id, config text or None for no file, extra args, text the one line must contain)
CASES = [
    ("missing file", None, [], "no such config file"),
    ("empty file", "", [], "empty config file"),
    ("invalid yaml", "model: {name: mlp", [], "invalid YAML"),
    ("unknown top-level key", GOOD + "colour: blue\n", [], "colour: unknown field"),
    ("unknown nested key", GOOD + "search: {sampel: tpe}\n", [], "search.sampel: unknown field"),
    ("wrong type", GOOD + "search: {num_samples: lots}\n", [], "search.num_samples"),
    ("low > high", GOOD + "space: {lr: {low: 0.1, high: 0.001}}\n", [], "low 0.1 > high 0.001"),
    ("log range low <= 0", GOOD + "space: {eps: {low: 0, high: 1.0e-6, log: true}}\n", [],
     "log range needs low > 0"),
    ("beta1 >= 1", GOOD + "space: {beta1: {low: 0.9, high: 1.0}}\n", [],
     "beta1 must be in [0, 1)"),
    ("fixed beta1 >= 1", GOOD + "optimizer: {beta1: 1.0}\n", [], "optimizer.beta1"),
    ("eps <= 0", GOOD + "space: {eps: {value: 0.0}}\n", [], "eps must be > 0"),
    ("num_samples <= 0", GOOD + "search: {num_samples: 0}\n", [], "search.num_samples"),
    ("--num-samples 0", GOOD, ["--num-samples", "0"], "search.num_samples"),
    ("grace_period > max_t", GOOD + "scheduler: {grace_period: 5}\n", [],
     "grace_period 5 > train.epochs 2"),
    ("pbt interval as long as training", GOOD + "scheduler: {name: pbt}\n", [],
     "scheduler.perturbation_interval 2 >= train.epochs 2"),
    ("pbt population of one", GOOD + "scheduler: {name: pbt, perturbation_interval: 1}\n",
     ["--num-samples", "1"], "search.num_samples 1: a PBT population needs at least 2"),
    ("synchronous pbt not all at once", GOOD + "scheduler: {name: pbt, perturbation_interval: "
     "1, synch: true}\nsearch: {num_samples: 4, max_concurrent: 2}\n", [],
     "search.max_concurrent 2 < search.num_samples 4 with scheduler.synch: true"),
    ("pbt with tpe", GOOD + "scheduler: {name: pbt, perturbation_interval: 1}\n"
     "search: {sampler: tpe}\n", [], "search.sampler tpe with scheduler.name pbt"),
    ("pb2 with nothing to choose", GOOD + "scheduler: {name: pb2, perturbation_interval: 1}\n"
     "space: {lr: {value: 0.001}, beta1: {value: 0.9}, one_minus_beta2: {value: 0.001}, "
     "eps: {value: 1.0e-8}}\n", [], "scheduler.name pb2: space has no continuous range"),
    ("unknown model", "model: {name: vgg}\n", [], "unknown model 'vgg'"),
    ("unknown dataset", "data: {dataset: imagenet}\n", [], "data.dataset"),
    ("unknown sampler", GOOD + "search: {sampler: grid}\n", [], "search.sampler"),
    ("unknown scheduler", GOOD + "scheduler: {name: median}\n", [], "scheduler.name"),
    ("point outside space", GOOD + "search: {points_to_evaluate: [{lr: 5.0}]}\n", [],
     "points_to_evaluate[0].lr 5.0 is outside"),
    ("--set unknown key", GOOD, ["--set", "optimizer.lrr=0.1"], "optimizer.lrr: unknown field"),
    ("--set without value", GOOD, ["--set", "optimizer.lr"], "expected KEY=VALUE"),
    ("unreachable ray address", GOOD, ["--address", f"127.0.0.1:{PORT}"],
     f"ray.address '127.0.0.1:{PORT}': nothing answers"),
    ("unreachable tracking uri", GOOD, ["--tracking-uri", f"http://127.0.0.1:{PORT}"],
     "mlflow.tracking_uri http://127.0.0.1:"),
    ("credentials never printed", GOOD,
     ["--tracking-uri", f"http://alice:s3cret@127.0.0.1:{PORT}"], "http://***@127.0.0.1"),
    ("resume without a search", GOOD, ["--resume", "--name", "nothing"], "no search to resume"),
    ("gpus on a cluster without GPUs", GOOD + "resources: {gpus_per_trial: 0.5}\n", [],
     "resources.gpus_per_trial 0.5: no node has that many GPUs"),
    ("more cpus than any node", GOOD + "resources: {cpus_per_trial: 64}\n", [],
     "resources.cpus_per_trial 64"),
    # Round two (issue 15): inputs a new user tried.
    ("config not UTF-8", GOOD.encode() + b"# caf\xe9\n", [], "not UTF-8 text (byte 0xe9"),
    ("config with a NUL byte", GOOD + "\x00\n", [], "invalid YAML"),
    ("config too large", GOOD + "#" * 1_000_001 + "\n", [], "a config is at most"),
    ("--name escapes the storage path", GOOD, ["--name", "../../x"],
     "--name '../../x': a search name is one folder name"),
    ("--name with a slash", GOOD, ["--name", "a/b"], "--name 'a/b'"),
    ("--name hidden", GOOD, ["--name", ".x"], "--name '.x'"),
    ("--name empty", GOOD, ["--name", ""], "--name ''"),
    ("name in the config escapes", GOOD + "name: ../up\n", [],
     "name: a search name is one folder name"),
    ("--set name escapes", GOOD, ["--set", "name=/etc"], "name: a search name is one folder"),
    ("model name with a slash", GOOD + "mlflow: {register_as: a/b}\n", [],
     "mlflow.register_as: a model name is"),
    ("tracking scheme MLflow lacks", GOOD, ["--tracking-uri", "ftp://127.0.0.1/m"],
     "mlflow.tracking_uri ftp://127.0.0.1/m: MLflow has no tracking store for scheme 'ftp'"),
    ("tracking scheme s3", GOOD, ["--tracking-uri", "s3://bucket/mlflow"],
     "no tracking store for scheme 's3'"),
    ("http tracking uri without a host", GOOD, ["--tracking-uri", "http:///mlflow"],
     "mlflow.tracking_uri http:///mlflow: no host"),
    ("cifar10 files missing", "data: {dataset: cifar10, root: nowhere}\nmodel: {name: mlp}\n",
     [], "data.dataset 'cifar10' not found under"),
    ("mnist files missing", "data: {dataset: mnist, root: nowhere}\nmodel: {name: cnn}\n", [],
     "missing MNIST/raw/train-images-idx3-ubyte"),
    ("storage path is a file", GOOD, ["--storage-path", "conf.yaml"],
     "--storage-path conf.yaml: exists and is not a folder"),
    ("negative checkpoint period", GOOD + "search: {checkpoint_period_s: -1}\n", [],
     "search.checkpoint_period_s"),
    ("no trials at once", GOOD, ["--set", "search.max_concurrent=0"], "search.max_concurrent"),
    # Issue 27: when a search stops.
    ("no time budget", GOOD + "search: {time_budget_s: 0}\n", [], "search.time_budget_s"),
    ("goal not a number", GOOD, ["--set", "search.goal=.nan"], "search.goal"),
    ("no patience", GOOD, ["--set", "search.patience_trials=0"], "search.patience_trials"),
    ("warm start from no search", GOOD + "search: {warm_start: [runs/nowhere]}\n", [],
     "search.warm_start runs/nowhere: no search there"),
    ("warm start of two kinds", GOOD, ["--set", "search.warm_start=[{study: s, "
                                       "mlflow_experiment: e}]"],
     "search.warm_start.0.source: give either optuna_storage and study, or mlflow_experiment"),
    ("warm start from no study", GOOD, ["--set", "search.warm_start=[{optuna_storage: "
                                        "sqlite:///none.db, study: s}]"],
     "search.warm_start Optuna study s in sqlite:///none.db: no Optuna study there"),
    # Issue 22: a space over any field, refused before Ray starts.
    ("space path that does not exist", GOOD + "space: {train.bach_size: {choices: [32]}}\n",
     [], "space.train.bach_size: no such field of a trial's config; nearest: train.batch_size"),
    ("space outside a trial's config", GOOD + "space: {search.seed: {choices: [1, 2]}}\n",
     [], "space.search.seed: no such field"),
    ("space bound the schema refuses",
     GOOD + "space: {train.batch_size: {low: 0, high: 64, int: true}}\n", [],
     "space.train.batch_size: low 0 is refused by train.batch_size: Input should be greater"),
    ("space choice the schema refuses",
     GOOD + "space: {train.schedule: {choices: [constant, bogus]}}\n", [],
     "space.train.schedule: choice 'bogus' is refused by train.schedule"),
    ("space choice the optimizer refuses", GOOD + "optimizer: {foreach: true}\n"
     "space: {optimizer.state_dtype: {choices: [fp32, int8]}}\n", [],
     "choice 'int8' is refused by optimizer: foreach supports state_dtype fp32 only"),
    ("space choices the optimizer refuses together", GOOD + "space: {optimizer.state_dtype: "
     "{choices: [fp32, int8]}, optimizer.shard_state: {choices: [false, true]}}\n", [],
     "space: optimizer.state_dtype='int8', optimizer.shard_state=True together are refused "
     "by optimizer: shard_state supports state_dtype fp32 only"),
    ("space float range on an int field",
     GOOD + "space: {train.batch_size: {low: 16, high: 64}}\n", [],
     "space.train.batch_size: train.batch_size takes whole numbers; add int: true"),
    ("space range on a bool field",
     GOOD + "space: {optimizer.amsgrad: {low: 0, high: 1}}\n", [],
     "space.optimizer.amsgrad: a range over a field that is not a number"),
    ("space log with low 0",
     GOOD + "space: {train.label_smoothing: {low: 0, high: 0.2, log: true}}\n", [],
     "space.train.label_smoothing: log range needs low > 0"),
    ("space log with step", GOOD + "space: {train.label_smoothing: "
     "{low: 0.05, high: 0.2, log: true, step: 0.05}}\n", [], "log and step do not go together"),
    ("space int with fractional bounds",
     GOOD + "space: {train.batch_size: {low: 1.5, high: 64, int: true}}\n", [],
     "int: true needs integer low, high and step"),
    ("space step that does not divide", GOOD + "space: {train.label_smoothing: "
     "{low: 0, high: 0.2, step: 0.03}}\n", [], "is not a multiple of step 0.03"),
    ("space empty choices", GOOD + "space: {train.schedule: {choices: []}}\n", [],
     "space.train.schedule: choices: empty"),
    ("space duplicate choices", GOOD + "space: {train.batch_size: {choices: [32, 32]}}\n",
     [], "space.train.batch_size: choices: 32 given twice"),
    ("space when on a key not searched",
     GOOD + "space: {train.warmup_fraction: {low: 0.1, high: 0.3, "
     "when: {train.schedule: onecycle}}}\n", [],
     "space.train.warmup_fraction.when: train.schedule is not searched"),
    ("space when on a float key", GOOD + "space: {train.label_smoothing: {low: 0, high: 0.2},"
     " train.warmup_fraction: {low: 0.1, high: 0.3, when: {train.label_smoothing: 0.1}}}\n",
     [], "train.warmup_fraction.when: train.label_smoothing is not categorical"),
    ("space when on a value never taken", GOOD + "space: {train.schedule: {choices: "
     "[constant, onecycle]}, train.warmup_fraction: {low: 0.1, high: 0.3, "
     "when: {train.schedule: cosine}}}\n", [],
     "train.warmup_fraction.when: train.schedule never takes 'cosine'"),
    ("space conditions in a cycle", GOOD + "space: {optimizer.name: {choices: [adam, adamw], "
     "when: {optimizer.amsgrad: true}}, optimizer.amsgrad: {choices: [false, true], "
     "when: {optimizer.name: adamw}}}\n", [], "space: conditions form a cycle"),
    ("space Adam key by its path", GOOD + "space: {optimizer.lr: {low: 0.001, high: 0.1}}\n",
     [], "space.optimizer.lr: search it by its short name, space.lr"),
    ("space over the budget", GOOD + "space: {train.epochs: {low: 1, high: 2, int: true}}\n",
     [], "space.train.epochs: not searched"),
    ("space over the validation data",
     GOOD + "space: {data.val_fraction: {low: 0.1, high: 0.3}}\n", [],
     "space.data.val_fraction: not searched: it changes the validation data"),
    ("space argument the model lacks", GOOD.replace("mlp", "cnn")
     + "space: {model.kwargs.widht: {low: 8, high: 16, int: true}}\n", [],
     "space.model.kwargs.widht: model cnn takes no argument 'widht'; it takes: width"),
    ("space value that is a list", GOOD + "space: {train.batch_size: {choices: [[32]]}}\n",
     [], "is not a scalar"),
    ("--set contradicts the space", GOOD + "space: {train.batch_size: {choices: [32, 64]}}\n",
     ["--set", "train.batch_size=128"], "--set train.batch_size=128: train.batch_size is "
     "searched by space.train.batch_size; to fix it, --set space.train.batch_size.value=128"),
    ("space batch the workers cannot share", GOOD + "resources: {workers_per_trial: 2}\n"
     "space: {train.batch_size: {choices: [32, 33]}}\n", [],
     "space.train.batch_size: 33 is not a multiple of resources.workers_per_trial 2"),
    ("point with an unknown dotted key", GOOD + "space: {train.batch_size: {choices: [32]}}\n"
     "search: {points_to_evaluate: [{train.batchsize: 32}]}\n", [],
     "search.points_to_evaluate[0]: unknown name 'train.batchsize'; nearest: train.batch_size"),
    ("point outside the choices", GOOD + "space: {train.batch_size: {choices: [32, 64]}}\n"
     "search: {points_to_evaluate: [{train.batch_size: 48}]}\n", [],
     "search.points_to_evaluate[0].train.batch_size 48 is outside space.train.batch_size"),
    # Round three: a metric no trial reports, an Optuna storage that cannot be opened.
    ("metric no trial reports", GOOD + "search: {metric: val_accuracy}\n", [],
     "search.metric 'val_accuracy': no trial reports it; trials report epoch, train_loss, "
     "val_loss, val_acc, lr, epoch_s, images_per_s; nearest: val_acc"),
    ("metric that is not a number", GOOD + "search: {metric: node_id}\n", [],
     "search.metric 'node_id': no trial reports it"),
    ("optuna storage does not answer", GOOD + "search: {optuna_storage: "
     f"'postgresql://alice:s3cret@127.0.0.1:{PORT}/db'}}\n", [],
     f"search.optuna_storage postgresql://***@127.0.0.1:{PORT}/db: cannot connect "
     "(OperationalError: connection failed"),
    ("optuna storage without a driver", GOOD + "search: {optuna_storage: "
     "'redis://alice:s3cret@127.0.0.1/0'}\n", [],
     "search.optuna_storage redis://***@127.0.0.1/0: cannot connect (NoSuchModuleError"),
    ("optuna sqlite in no folder", GOOD
     + "search: {optuna_storage: 'sqlite:////nonexistent-dir/x.db'}\n", [],
     "search.optuna_storage sqlite:////nonexistent-dir/x.db: no folder /nonexistent-dir"),
    ("optuna sqlite that is no database", GOOD
     + "search: {optuna_storage: 'sqlite:///conf.yaml'}\n", [],
     "search.optuna_storage sqlite:///conf.yaml: cannot open it (DatabaseError: file is not "
     "a database)"),
    ("optuna journal under a file", GOOD + "search: {optuna_storage: conf.yaml/x.journal}\n",
     [], "search.optuna_storage conf.yaml/x.journal: cannot make its folder: conf.yaml is "
     "a file"),
    ("optuna journal that is another file", GOOD + "search: {optuna_storage: conf.yaml}\n",
     [], "search.optuna_storage conf.yaml: not an Optuna journal (its first line is not "
     "JSON)"),
    ("optuna journal that is a folder", GOOD + "search: {optuna_storage: .}\n", [],
     "search.optuna_storage .: is a folder; an Optuna journal is a file"),
]


@pytest.mark.parametrize("text,args,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, local_ray,
                                         text, args, expected):
    monkeypatch.chdir(tmp_path)
    if isinstance(text, bytes):
        (tmp_path / "conf.yaml").write_bytes(text)
    elif text is not None:
        (tmp_path / "conf.yaml").write_text(text)
    outside = set(tmp_path.parent.iterdir())
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: main(["conf.yaml", *args]))
    out, err = capsys.readouterr()
    assert exit_.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0] and "Traceback" not in err
    assert "s3cret" not in out + err
    leftovers = {p.name for p in tmp_path.iterdir()} - {"conf.yaml"}
    assert not leftovers  # no runs/, no mlflow.db
    assert set(tmp_path.parent.iterdir()) == outside  # nothing written outside


def test_existing_name_without_resume_is_refused(tmp_path, monkeypatch, capsys, local_ray):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf.yaml").write_text(GOOD)
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: main(["conf.yaml", "--name", "taken"]))
    assert exit_.value.code == 2
    assert "--name taken" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_an_experiment_in_mlflows_trash_stops_the_search_before_any_trial(
        tmp_path, monkeypatch, capsys, local_ray):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf.yaml").write_text(GOOD)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.delete_experiment(client.create_experiment("binned"))
    capsys.readouterr()  # MLflow's own lines as this test made the store
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: main(["conf.yaml", "--name", "binned"]))
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: mlflow.experiment binned: deleted (in MLflow's trash)")
    assert not list((tmp_path / "runs").glob("binned/trial_*"))  # no trial ran
    assert client.search_runs([client.get_experiment_by_name("binned").experiment_id],
                              run_view_type=3) == []  # ViewType.ALL: nothing was made


def test_gpu_trial_on_gpuless_local_ray_is_one_line(tmp_path):
    (tmp_path / "conf.yaml").write_text(GOOD + "resources: {gpus_per_trial: 1}\n")
    proc = run_module("search.run", "conf.yaml", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "resources.gpus_per_trial 1: no node has that many GPUs" in line


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path):
    (tmp_path / "conf.yaml").write_text(GOOD)
    started = time.monotonic()
    proc = run_module("search.run", "conf.yaml", "--tracking-uri", f"http://127.0.0.1:{PORT}",
                      cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    print(f"unreachable tracking URI rejected after {elapsed:.1f}s")


def test_more_gpus_than_any_node_has_is_refused_not_pending(tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    try:
        (tmp_path / "conf.yaml").write_text(GOOD + "resources: {gpus_per_trial: 2}\n")
        proc = run_module("search.run", "conf.yaml", "--address", cluster.address,
                          cwd=tmp_path, timeout=120)
    finally:
        cluster.shutdown()
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert "resources.gpus_per_trial 2: no node has that many GPUs (the most on any node is 1)" \
        in line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
