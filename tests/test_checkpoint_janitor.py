"""Which checkpoints the driver deletes (search/record/checkpoint_janitor.py), on folders
that Ray itself wrote.

One module fixture runs a real two-trial search twice, as a user's `--resume` would: run 1
ends with trial `a` errored after checkpoints 0 and 1 and trial `b` errored before any;
run 2 resumes both to checkpoint 3. Each test starts from a copy in which run 2's
experiment state has not reached storage yet (Ray's snapshots are not atomic, and it skips
a sync while one is in flight): storage names a/checkpoint_000001 and nothing of b, while
a/0..3 and b/0..3 exist and the live trials name a/3 and b/3.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs
import pytest
from ray import tune
from ray.tune.callback import CallbackList

ITERATIONS = 4
LIVE: dict[str, list] = {}  # the trials of the newest run, as Ray's loop hands them over


def trainable(config):
    """Checkpoints every step; fails once at `fail_at` (a flag file keeps the resume alive)."""
    start, checkpoint = 0, tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start = json.loads(Path(d, "step.json").read_text())["step"] + 1
    for step in range(start, ITERATIONS):
        flag = Path(config["flags"], config["trial"]["name"])
        if step == config["trial"]["fail_at"] and not flag.exists():
            flag.touch()
            raise RuntimeError("run 1 ends here")
        with tempfile.TemporaryDirectory() as d:
            Path(d, "step.json").write_text(json.dumps({"step": step}))
            tune.report({"step": step, "start": start},
                        checkpoint=tune.Checkpoint.from_directory(d))


class KeepTrials(tune.Callback):
    def on_experiment_end(self, trials, **info):
        LIVE["trials"] = list(trials)


def trial_dirname(trial) -> str:
    return trial.config["trial"]["name"]


def experiment_states(exp: Path) -> list[Path]:
    return sorted(exp.glob("experiment_state-*.json"))


@pytest.fixture(scope="module")
def ray_wrote(local_ray, tmp_path_factory):
    """(experiment folder, pristine copy, run 2's experiment state file and its bytes)."""
    root = tmp_path_factory.mktemp("janitor")
    (root / "flags").mkdir()
    tune.Tuner(
        trainable,
        param_space={"flags": str(root / "flags"), "trial": tune.grid_search(
            [{"name": "a", "fail_at": 2}, {"name": "b", "fail_at": 0}])},
        tune_config=tune.TuneConfig(trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name="exp", storage_path=str(root / "storage"), verbose=0,
            callbacks=[KeepTrials()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None)),
    ).fit()
    exp = root / "storage" / "exp"
    run1_state = experiment_states(exp)[-1]
    tune.Tuner.restore(str(exp), trainable, resume_errored=True).fit()
    run2_state = experiment_states(exp)[-1]
    assert run2_state != run1_state
    for name in "ab":
        assert checkpoints(exp, name) == [f"checkpoint_{i:06d}" for i in range(ITERATIONS)]
    assert [t.checkpoint.path.rsplit("/", 1)[-1] for t in LIVE["trials"]] == [
        "checkpoint_000003", "checkpoint_000003"]
    run2_bytes = run2_state.read_bytes()
    run2_state.unlink()  # storage shows run 1's state: a/1, and no checkpoint of b
    pristine = root / "pristine"
    shutil.copytree(exp, pristine)
    return exp, pristine, run2_state, run2_bytes


@pytest.fixture
def experiment(ray_wrote):
    """The experiment folder, reset to the pristine copy, and the live trials of run 2."""
    exp, pristine, _, _ = ray_wrote
    shutil.rmtree(exp)
    shutil.copytree(pristine, exp)
    return exp, LIVE["trials"]


def checkpoints(exp: Path, name: str) -> list[str]:
    return sorted(p.name for p in (exp / name).iterdir() if p.name.startswith("checkpoint_"))


ALL = [f"checkpoint_{i:06d}" for i in range(ITERATIONS)]


def rays_snapshot(janitor, folder: Path, session: str) -> None:
    """What Ray does with callbacks at a snapshot: CallbackList.save_to_dir calls get_state."""
    CallbackList([janitor]).save_to_dir(str(folder), session_str=session)


def test_the_janitor_keeps_what_the_stored_experiment_state_names_whatever_callback_state_says(
        experiment):
    from search.record.checkpoint_janitor import CheckpointJanitor

    exp, trials = experiment
    janitor = CheckpointJanitor()
    for i in range(3):  # three snapshots whose callback state reached storage...
        janitor.on_step_begin(i, trials)
        rays_snapshot(janitor, exp, f"2099-01-01_00-00-0{i}")
    # ...while the stored experiment state still names a/1 and no checkpoint of b.
    assert checkpoints(exp, "a") == ALL[1:]  # only what is older than a/1 goes
    assert checkpoints(exp, "b") == ALL  # b's stored state names none: b loses nothing
    # The search resumes from what storage says: a from checkpoint 1, b from scratch.
    grid = tune.Tuner.restore(str(exp), trainable, resume_errored=True).fit()
    assert not grid.errors
    assert sorted((r.config["trial"]["name"], r.metrics["start"]) for r in grid) == [
        ("a", 2), ("b", 0)]


def test_get_state_deletes_nothing_and_reads_no_storage(experiment, tmp_path):
    from search.record.checkpoint_janitor import CheckpointJanitor

    exp, trials = experiment
    watched = Watched()
    trials = with_filesystem(trials, pyarrow.fs.PyFileSystem(watched))
    janitor = CheckpointJanitor()
    for i in range(3):
        janitor.on_step_begin(i, trials)
        watched.calls.clear()
        state = janitor.get_state()
        assert watched.calls == []
        rays_snapshot(janitor, exp, f"2099-01-01_00-00-0{i}")
        assert state is None or len(pickle.dumps(state)) < 200
    assert checkpoints(exp, "a") == ALL[1:] and checkpoints(exp, "b") == ALL


def test_a_failing_delete_is_logged_once_and_does_not_end_the_search(experiment, caplog,
                                                                     monkeypatch):
    from search.record.checkpoint_janitor import CheckpointJanitor

    exp, trials = experiment
    # search/record/progress.py's setup_logging, if a test ran it, stops `search` records
    # short of the root logger, where caplog listens.
    monkeypatch.setattr(logging.getLogger("search"), "propagate", True)
    trials = with_filesystem(trials, pyarrow.fs.PyFileSystem(Watched(fail_deletes=True)))
    janitor = CheckpointJanitor()
    # What the janitor's own logger emits, counted once each (caplog's handlers may see a
    # record twice when an earlier test left handlers on the `search` logger).
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("search.record.checkpoint_janitor")
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="search"):
            janitor.on_step_begin(0, trials)
            janitor.on_experiment_end(trials)
    finally:
        logger.removeHandler(handler)
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in records]
    assert "permission denied (injected)" in warnings[0].getMessage()
    assert any("injected" in r.getMessage() for r in records
               if r.levelno == logging.DEBUG)  # the second failure, at debug level
    assert checkpoints(exp, "a") == ALL and checkpoints(exp, "b") == ALL


def test_on_experiment_end_without_a_final_snapshot_keeps_what_storage_names(experiment):
    # Ray's exception path (tune.py run(): `except Exception: runner.cleanup()`) calls
    # on_experiment_end with no final snapshot: storage still names a/1.
    from search.record.checkpoint_janitor import CheckpointJanitor

    exp, trials = experiment
    CheckpointJanitor().on_experiment_end(trials)
    assert checkpoints(exp, "a") == ALL[1:] and checkpoints(exp, "b") == ALL


def test_after_the_final_snapshot_only_what_it_names_is_left(experiment, ray_wrote):
    from search.record.checkpoint_janitor import CheckpointJanitor

    exp, trials = experiment
    _, _, run2_state, run2_bytes = ray_wrote
    run2_state.write_bytes(run2_bytes)  # Ray's forced, awaited final snapshot
    CheckpointJanitor().on_experiment_end(trials)
    assert checkpoints(exp, "a") == ALL[-1:] and checkpoints(exp, "b") == ALL[-1:]


def test_the_janitor_follows_the_stored_state_as_it_advances(experiment, ray_wrote,
                                                             monkeypatch):
    from search.record import checkpoint_janitor

    exp, trials = experiment
    _, _, run2_state, run2_bytes = ray_wrote
    janitor = checkpoint_janitor.CheckpointJanitor()
    janitor.on_step_begin(0, trials)
    assert checkpoints(exp, "a") == ALL[1:]
    run2_state.write_bytes(run2_bytes)
    janitor.on_step_begin(1, trials)  # within the check period: not looked at yet
    assert checkpoints(exp, "a") == ALL[1:]
    monkeypatch.setattr(checkpoint_janitor, "CHECK_PERIOD_S", 0.0)
    janitor.on_step_begin(2, trials)
    assert checkpoints(exp, "a") == ALL[-1:] and checkpoints(exp, "b") == ALL[-1:]


def test_a_stored_state_being_written_deletes_nothing(experiment, ray_wrote):
    from search.record.checkpoint_janitor import CheckpointJanitor

    exp, trials = experiment
    _, _, run2_state, run2_bytes = ray_wrote
    run2_state.write_bytes(run2_bytes[: len(run2_bytes) // 2])  # a sync mid-way
    janitor = CheckpointJanitor()
    janitor.on_step_begin(0, trials)
    janitor.on_experiment_end(trials)
    assert checkpoints(exp, "a") == ALL and checkpoints(exp, "b") == ALL


def test_the_janitor_picks_the_experiment_state_rays_restore_picks(experiment, ray_wrote):
    # Names what the janitor reads of Ray: the file name Tuner.restore picks
    # (_find_newest_experiment_checkpoint), the "trial_data" of that file, and a trial's
    # storage (`Trial.storage.storage_filesystem`, `.experiment_fs_path`). A Ray release
    # that moves one fails here.
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.execution.tune_controller import TuneController

    from search.record.checkpoint_janitor import newest_experiment_state, stored_trials

    exp, trials = experiment
    _, _, run2_state, run2_bytes = ray_wrote
    run2_state.write_bytes(run2_bytes)
    assert TuneController.CKPT_FILE_TMPL.format("x") == "experiment_state-x.json"
    storage = trials[0].storage
    assert storage.experiment_fs_path == str(exp)
    fs = storage.storage_filesystem
    newest = newest_experiment_state(fs, storage.experiment_fs_path)
    assert newest.path == _find_newest_experiment_checkpoint(str(exp)) == str(run2_state)
    named = {t.path.rsplit("/", 1)[-1]: t.checkpoint.path.rsplit("/", 1)[-1]
             for t in stored_trials(fs, newest.path)}
    assert named == {"a": "checkpoint_000003", "b": "checkpoint_000003"}


# A real pyarrow filesystem, local underneath, that records each call and can refuse deletes.
class Watched(pyarrow.fs.FileSystemHandler):
    def __init__(self, fail_deletes: bool = False) -> None:
        self.fs, self.fail_deletes, self.calls = pyarrow.fs.LocalFileSystem(), fail_deletes, []

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def _call(self, name, *args):
        self.calls.append(name)
        if self.fail_deletes and name.startswith("delete"):
            raise PermissionError(f"{args[0]}: permission denied (injected)")
        return getattr(self.fs, name)(*args)

    def get_type_name(self):
        return "watched"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def equals(self, other):
        return self is other

    def get_file_info(self, paths):
        return self._call("get_file_info", paths)

    def get_file_info_selector(self, selector):
        return self._call("get_file_info", selector)

    def create_dir(self, path, recursive):
        return self._call("create_dir", path, recursive)

    def delete_dir(self, path):
        return self._call("delete_dir", path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        return self._call("delete_dir_contents", path, missing_dir_ok)

    def delete_root_dir_contents(self):
        raise PermissionError("/: permission denied (injected)")

    def delete_file(self, path):
        return self._call("delete_file", path)

    def move(self, src, dest):
        return self._call("move", src, dest)

    def copy_file(self, src, dest):
        return self._call("copy_file", src, dest)

    def open_input_stream(self, path):
        return self._call("open_input_stream", path)

    def open_input_file(self, path):
        return self._call("open_input_file", path)

    def open_output_stream(self, path, metadata):
        return self._call("open_output_stream", path, metadata)

    def open_append_stream(self, path, metadata):
        return self._call("open_append_stream", path, metadata)


def with_filesystem(trials, fs):
    """Copies of `trials` whose storage is reached through `fs`."""
    copies = []
    for trial in trials:
        trial = copy.copy(trial)
        trial.storage = copy.copy(trial.storage)
        trial.storage.storage_filesystem = fs
        copies.append(trial)
    return copies
