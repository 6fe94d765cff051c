"""Population-based training, live (issue 26): a real search with `scheduler.name: pbt`.

Synchronous PBT makes the exploits deterministic: at epochs 2 and 4 the whole population
has reported, the weakest member copies the strongest, and training is bitwise on the CPU.
One uninterrupted search is shared: its member's curve is checked, and it is what a search
killed between its two perturbations and resumed must repeat.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from search import config as config_
from search.config import TrialConfig
from tests.conftest import KILLED_WITH_ITS_RAY, ROOT, run_module
from tests.test_search import children

EXPLOIT = re.compile(r"^trial (\w+) copies trial (\w+) at epoch (\d+): (.*)$", re.M)
STARTED = re.compile(r"^trial (\w+) started: lr=(\S+) ", re.M)
CONF = """
data: {dataset: digits}
model: {name: mlp}
train: {epochs: 5}
search: {num_samples: 4, max_concurrent: 4}
scheduler: {name: pbt, perturbation_interval: 2, synch: true}
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("pbt")
    (cwd / "conf.yaml").write_text(CONF)
    proc = run_module("search.run", "conf.yaml", "--name", "pbt", cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, proc.stdout


def by_first_lr(output: str, started: str | None = None) -> list[tuple[str, ...]]:
    """The exploit lines of `output`, each trial named by the lr it started with (the
    seeded population's, the same in every run; Ray's trial ids are random)."""
    lr = dict(STARTED.findall(started or output))

    def named(text: str) -> str:
        return re.sub(r"\b[0-9a-f]{8}\b", lambda m: f"<{lr.get(m.group(0), m.group(0))}>", text)

    return [tuple(named(x) for x in line) for line in EXPLOIT.findall(output)]


def test_a_pbt_search_exploits_and_its_member_continues_from_the_donor(uninterrupted):
    cwd, stdout = uninterrupted
    # One exploit at each interval before the last epoch, said on a line of its own.
    exploits = EXPLOIT.findall(stdout)
    assert [e[2] for e in exploits] == ["2", "4"], stdout[-3000:]
    member, donor, _, changes = exploits[0]
    assert member != donor
    new_lr = float(re.search(r"\blr \S+ -> (\S+) \(", changes).group(1))
    new_beta1 = float(re.search(r"\bbeta1 \S+ -> (\S+) \(", changes).group(1))
    started = dict(STARTED.findall(stdout))
    assert set(started) >= {member, donor} and len(started) == 4  # each member starts once

    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    parents, kids = children(client, "pbt")
    assert len(kids) == 4 and parents[0].data.params["scheduler"].startswith("pbt (every 2")
    run = {k.data.tags["trial_id"]: k for k in kids}[member]
    assert run.data.tags["pbt.exploit.1"] == f"trial {member} copies trial {donor} at " \
                                              f"epoch 2: {changes}"
    assert float(run.data.params["lr"]) == pytest.approx(float(started[member]), rel=1e-2)
    # Its curve goes on from the donor's epoch 2: one value per epoch, the new lr after it.
    lr = client.get_metric_history(run.info.run_id, "lr")
    assert [m.step for m in lr] == [1, 2, 3, 4, 5]
    assert [m.value for m in lr][:2] == pytest.approx([float(started[member])] * 2, rel=1e-2)
    assert [m.value for m in lr][2:4] == pytest.approx([new_lr] * 2, rel=1e-2)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == \
        [1, 2, 3, 4, 5]
    beta1 = client.get_metric_history(run.info.run_id, "beta1")  # Adam's values per epoch
    assert [m.step for m in beta1] == [1, 2, 3, 4, 5]
    assert [m.value for m in beta1][2:4] == pytest.approx([new_beta1] * 2, rel=1e-4)
    # Ray's own record of the member agrees: epochs 1-5 once each, 3 and 4 after the copy.
    rows = [json.loads(line) for line in
            (cwd / "runs" / "pbt" / f"trial_{member}" / "result.json").read_text()
            .splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2]["lr"] == pytest.approx(new_lr, rel=1e-2)


def test_the_winners_schedule_is_in_best_yaml_and_replays_to_its_accuracy(uninterrupted,
                                                                         tmp_path):
    cwd, stdout = uninterrupted
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    parents, kids = children(client, "pbt")
    winner = parents[0].data.tags["best_trial_id"]
    # The lineage, from the exploit lines: back from the winner, donor by donor.
    chain, trial, last = [], winner, 5
    for member, donor, epoch, _ in reversed(EXPLOIT.findall(stdout)):
        if member == trial and int(epoch) < last:
            chain.append((int(epoch) + 1, member))
            trial, last = donor, int(epoch)
    chain.append((1, trial))
    best_yaml = cwd / "runs" / "pbt" / "best.yaml"
    cfg = config_.load(best_yaml, schema=TrialConfig)
    assert [p.epoch for p in cfg.train.phases] == [e for e, _ in chain[::-1][1:]]
    description = parents[0].data.tags["mlflow.note.content"]
    segments = re.findall(r"epochs? (\d+)(?:-\d+)?: trial (\w+)", description.split(
        "**PBT lineage**")[1].split("\n")[0])
    assert [(int(e), t) for e, t in segments] == chain[::-1]
    assert (cwd / "runs" / "pbt" / "plots" / "pbt_schedules.png").stat().st_size > 0
    assert "no importances or metric-against-value plots under PBT" in stdout
    # Replayed from scratch, the schedule gives the winner's weights: its donors' epochs
    # are the same computation (one seed, one data order), bit for bit on the CPU.
    proc = run_module("search.train", str(best_yaml), "--out", str(tmp_path / "out"), cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replayed = json.loads((tmp_path / "out" / "metrics.json").read_text())
    won = {k.data.tags["trial_id"]: k for k in kids}[winner].data.metrics["val_acc"]
    assert replayed[-1]["val_acc"] == pytest.approx(won, abs=1e-6)


def snapshot_since(exp_dir: Path, t: float) -> bool:
    """Whether Ray has saved its trials and its callbacks' state since `t`."""
    files = [max(exp_dir.glob(pattern), default=None)
             for pattern in ("experiment_state-*.json", "callback-states-*.pkl")]
    return all(f is not None and f.stat().st_mtime > t for f in files)


def test_a_pbt_search_killed_between_perturbations_resumes_on_schedule(tmp_path,
                                                                       uninterrupted):
    (tmp_path / "conf.yaml").write_text(CONF)
    log = tmp_path / "killed.log"
    # Ray snapshots every second here, so that the kill lands between the perturbations.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "1",
           **KILLED_WITH_ITS_RAY}
    with log.open("w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "search.run", "conf.yaml", "--name",
                                   "pbt"], cwd=tmp_path, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    deadline, seen = time.monotonic() + 240, None
    # Killed once Ray has saved its state after the first exploit (epoch 2).
    while seen is None or not snapshot_since(tmp_path / "runs" / "pbt", seen):
        assert driver.poll() is None, "search ended before it could be killed"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        if seen is None and EXPLOIT.search(log.read_text()):
            seen = time.time()
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    killed = log.read_text()
    assert [e[2] for e in EXPLOIT.findall(killed)] == ["2"], killed[-3000:]
    proc = run_module("search.run", "conf.yaml", "--name", "pbt", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # The epoch-2 exploit is not made again, and the next one comes at epoch 4, with the
    # choices of the uninterrupted search: the same member copying the same donor, the
    # same values explored the same way (PBT's scores, epochs and seeded draws kept).
    _, whole = uninterrupted
    assert by_first_lr(killed) + by_first_lr(proc.stdout, killed) == by_first_lr(whole)

    # MLflow: four runs, each with its first params, every epoch once, finished; the
    # exploited members tagged with each exploit.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, kids = children(client, "pbt")
    assert len(kids) == 4
    first_lr = dict(STARTED.findall(killed))
    for kid in kids:
        trial_id = kid.data.tags["trial_id"]
        assert kid.info.status == "FINISHED"
        assert float(kid.data.params["lr"]) == pytest.approx(float(first_lr[trial_id]),
                                                              rel=1e-2)
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "val_acc")]
        assert steps == [1, 2, 3, 4, 5], (trial_id, steps)
    tags = sorted(v for k in kids for t, v in k.data.tags.items() if t.startswith("pbt."))
    lines = EXPLOIT.findall(killed + proc.stdout)
    assert len(tags) == len(lines) == 2


def test_a_pb2_search_chooses_its_values_by_the_bandit_within_the_spaces_bounds(tmp_path):
    (tmp_path / "conf.yaml").write_text(CONF.replace("name: pbt", "name: pb2"))
    proc = run_module("search.run", "conf.yaml", "--name", "pb2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exploits = EXPLOIT.findall(proc.stdout)
    assert [e[2] for e in exploits] == ["2", "4"], proc.stdout[-3000:]
    # At epoch 2 each member has one result: no interval's gain to learn from, so the
    # donor's values are copied; at epoch 4 the GP chooses them.
    assert exploits[0][3] == "nothing explored"
    member, _, _, changes = exploits[1]
    assert "(GP-UCB)" in changes
    new_lr = float(re.search(r"\blr \S+ -> (\S+) \(GP-UCB\)", changes).group(1))
    space = config_.load(tmp_path / "conf.yaml").space.keys()
    assert space["lr"].bounds()[0] <= new_lr <= space["lr"].bounds()[1]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, kids = children(client, "pb2")
    assert len(kids) == 4 and parents[0].data.params["scheduler"].startswith("pb2 (every 2")
    run = {k.data.tags["trial_id"]: k for k in kids}[member]
    lr = client.get_metric_history(run.info.run_id, "lr")
    assert [m.step for m in lr] == [1, 2, 3, 4, 5]
    assert lr[-1].value == pytest.approx(new_lr, rel=1e-2)  # epoch 5 trained with it
    best = config_.load(tmp_path / "runs" / "pb2" / "best.yaml", schema=TrialConfig)
    assert best.train.epochs == 5  # the winner's lineage, a config search.train takes
