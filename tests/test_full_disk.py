"""A search whose storage fills up (a small tmpfs, mounted here as CI runs as root).

Without search/full_disk.py, measured on Ray 2.60: Ray copied each checkpoint and its own
experiment state into storage in place, so a full disk left an empty `checkpoint.pt` and an
`experiment_state-*.json` cut in the middle (the search could not be resumed), retried
every trial into the same full disk, and ended in a traceback (an `error.pkl` of 0 bytes).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from search import full_disk, optuna_search
from search.record.store import CHAMPION_CHECKPOINT
from tests.conftest import ROOT, run_module


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "48m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write zeros until the disk is full; the file that holds them."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    return filler


def test_a_copy_into_a_full_disk_leaves_the_old_file_whole(small_disk, tmp_path):
    full_disk.atomic_copies()
    import ray.train._internal.storage as ray_storage

    source = tmp_path / "new"
    source.mkdir()
    (source / "checkpoint.pt").write_bytes(b"n" * (4 << 20))
    target = small_disk / "checkpoint_000000"
    target.mkdir()
    (target / "checkpoint.pt").write_bytes(b"o" * 1000)
    filler = fill(small_disk)
    with pytest.raises(OSError) as raised:
        ray_storage._pyarrow_fs_copy_files(str(source), str(target))
    assert full_disk.is_full(raised.value)
    assert (target / "checkpoint.pt").read_bytes() == b"o" * 1000  # the old one, whole
    assert [p.name for p in target.iterdir()] == ["checkpoint.pt"]  # no part left
    filler.unlink()
    ray_storage._pyarrow_fs_copy_files(str(source), str(target))
    assert (target / "checkpoint.pt").read_bytes() == b"n" * (4 << 20)


def test_a_snapshot_copy_cut_short_leaves_no_experiment_state_newer_than_its_searcher(
        tmp_path):
    # Ray's experiment state names the trials; the generator's and searcher's states count
    # and know them. Copied last, the experiment state is never the newer of the two.
    import pyarrow.fs

    staging, storage = tmp_path / "staging", tmp_path / "storage"
    names = ["experiment_state-2026-12-06_00-01.json", "search_gen_state-2026-12-06_00-01.json",
             "searcher-state-2026-12-06_00-01.pkl", "callback-states-2026-12-06_00-01.pkl",
             "trial_a/result.json", "zz-last-by-name.json"]
    for name in names:
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(name)
    copied = []

    def copy(src, dst, **kwargs):
        if len(copied) == cut:
            raise KeyboardInterrupt  # the driver killed mid-copy
        copied.append(Path(src).relative_to(staging).as_posix())
        pyarrow.fs.copy_files(src, dst, **kwargs)

    cut = len(names) - 1
    with pytest.raises(KeyboardInterrupt):
        full_disk.copy_whole(copy, str(staging), str(storage))
    assert not list(storage.glob("experiment_state-*"))
    assert len(list(storage.glob("search_gen_state-*"))) == 1
    copied.clear()
    cut = None
    full_disk.copy_whole(copy, str(staging), str(storage))
    assert copied[-1] == names[0] and sorted(copied) == sorted(names)


def test_a_journal_cut_in_the_middle_of_a_record_is_mended(tmp_path):
    import optuna

    storage = optuna_search.storage(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    journal = tmp_path / optuna_search.JOURNAL
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code":5,"worker_id":"w","trial_id":1,"va')
    optuna_search.mend_journal(None, tmp_path)
    assert journal.read_bytes() == whole
    study = optuna.load_study(study_name="s", storage=optuna_search.storage(None, tmp_path))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    reread = optuna.load_study(study_name="s", storage=optuna_search.storage(None, tmp_path))
    assert len(reread.trials) == 3


ARGS = ["--set", "search.num_samples=1", "--set", "train.epochs=6", "--set", "scheduler.name=fifo",
        "--set", "search.checkpoint_period_s=0", "--set", "mlflow.register_as=null"]


def test_a_search_stops_in_one_line_when_its_disk_fills_and_resumes_once_freed(small_disk,
                                                                            tmp_path):
    folder = small_disk / "fd"
    filled: list[Path] = []

    def fill_after_first_checkpoint() -> None:
        end = time.monotonic() + 240
        while time.monotonic() < end and not list(folder.glob("trial_*/checkpoint_000001")):
            time.sleep(0.01)
        filled.append(fill(small_disk))

    filler = threading.Thread(target=fill_after_first_checkpoint, daemon=True)
    filler.start()
    args = [str(ROOT / "conf/digits.yaml"), "--storage-path", str(small_disk), "--name", "fd",
            *ARGS]
    stopped = run_module("search.run", *args, cwd=tmp_path)
    filler.join(timeout=10)
    assert filled, stopped.stdout + stopped.stderr
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    error = stopped.stderr.strip().splitlines()
    assert error[-1].startswith(f"error: {folder}: trial "), stopped.stderr
    assert "no space left on device for the checkpoint of epoch" in error[-1]
    assert "--resume --name fd" in error[-1]
    assert "Traceback" not in stopped.stderr + stopped.stdout  # the one line says it all
    # Nothing half-written where a resume reads: every checkpoint there loads, Ray's state
    # parses, no part of a copy is left.
    checkpoints = list(folder.glob("trial_*/checkpoint_*/checkpoint.pt"))
    assert checkpoints
    for path in checkpoints:
        assert torch.load(path, weights_only=True)["epoch"] >= 1
    for path in folder.glob("experiment_state-*.json"):
        json.loads(path.read_text())
    assert not list(folder.rglob("*.part-*"))

    filled[0].unlink()  # space freed
    resumed = run_module("search.run", *args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 completed" in resumed.stdout, resumed.stdout
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fd")
    children = [r for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("trial_id")]
    assert len(children) == 1
    steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "val_acc")]
    assert sorted(steps) == list(range(1, 7))  # each epoch once, the replayed ones too


def test_a_full_artifact_store_loses_no_metric_and_registers_no_half_model(tmp_path):
    """`mlflow server --artifacts-destination` on a disk with room for the small files but
    not for the model: every metric arrives, the run ends, no version of half a model is
    registered, and once space is freed `--resume` registers the whole one."""
    import mlflow

    from bench.mlflow_server import MlflowServer

    store = tmp_path / "artifacts"
    mount_tmpfs(store, "2m")
    try:
        server = MlflowServer(tmp_path)
        try:
            free = os.statvfs(store)
            (store / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize - (160 << 10)))
            args = [str(ROOT / "conf/digits.yaml"), "--name", "af", "--tracking-uri",
                    server.uri, "--set", "search.num_samples=1", "--set", "train.epochs=2",
                    "--set", "scheduler.name=fifo", "--set", "mlflow.register_as=af-model"]
            done = run_module("search.run", *args, cwd=tmp_path)
            out = done.stdout + done.stderr
            assert done.returncode == 1, out  # asked to register, and could not
            assert "Traceback" not in out
            assert "model: af-model not registered (" in done.stdout, out
            client = mlflow.MlflowClient(server.uri)
            assert client.search_model_versions("name='af-model'") == []
            experiment = client.get_experiment_by_name("af")
            runs = client.search_runs([experiment.experiment_id])
            parent = next(r for r in runs if r.data.tags.get("role") == "search")
            assert parent.info.status == "FINISHED"
            children = [r for r in runs if r.data.tags.get("trial_id")]
            assert len(children) == 1
            steps = [m.step for m in client.get_metric_history(children[0].info.run_id,
                                                               "val_acc")]
            assert sorted(steps) == [1, 2]

            (store / "filler").unlink()  # space freed: the end of the search, again
            again = run_module("search.run", *args, "--resume", cwd=tmp_path)
            assert again.returncode == 0, again.stdout + again.stderr
            versions = client.search_model_versions("name='af-model'")
            assert [int(v.version) for v in versions] == [1], again.stdout + again.stderr
            whole = client.download_artifacts(versions[0].run_id, CHAMPION_CHECKPOINT,
                                              str(tmp_path))
            assert torch.load(whole, weights_only=True)["model"]  # the checkpoint beside it
            mlflow.set_tracking_uri(server.uri)
            try:
                model = mlflow.pytorch.load_model("models:/af-model/1")
            finally:
                mlflow.set_tracking_uri(None)
            assert sum(p.numel() for p in model.parameters()) > 0
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)
