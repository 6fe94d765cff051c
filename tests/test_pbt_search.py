"""Population-based training, live (issue 26): a real search with `scheduler.name: pbt`.

Synchronous PBT makes the exploit deterministic: at epoch 2 the whole population has
reported, the weakest member copies the strongest, and training is bitwise on the CPU.
"""

from __future__ import annotations

import json
import re

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_module
from tests.test_search import children

EXPLOIT = re.compile(r"^trial (\w+) copies trial (\w+) at epoch (\d+): (.*)$", re.M)


def test_a_pbt_search_exploits_once_and_its_member_continues_from_the_donor(tmp_path):
    (tmp_path / "conf.yaml").write_text("""
data: {dataset: digits}
model: {name: mlp}
train: {epochs: 4}
search: {num_samples: 4, max_concurrent: 4}
scheduler: {name: pbt, perturbation_interval: 2, synch: true}
""")
    proc = run_module("search.run", "conf.yaml", "--name", "pbt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # One interval before the last epoch: one exploit, said on a line of its own.
    [(member, donor, epoch, changes)] = EXPLOIT.findall(proc.stdout)
    assert epoch == "2" and member != donor
    new_lr = float(re.search(r"\blr \S+ -> (\S+) \(", changes).group(1))
    new_beta1 = float(re.search(r"\bbeta1 \S+ -> (\S+) \(", changes).group(1))
    started = dict(re.findall(r"^trial (\w+) started: lr=(\S+) ", proc.stdout, re.M))
    assert set(started) >= {member, donor} and len(started) == 4  # each member starts once

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, kids = children(client, "pbt")
    assert len(kids) == 4 and parents[0].data.params["scheduler"].startswith("pbt (every 2")
    run = {k.data.tags["trial_id"]: k for k in kids}[member]
    assert run.data.tags["pbt.exploit.1"] == f"trial {member} copies trial {donor} at " \
                                              f"epoch 2: {changes}"
    assert float(run.data.params["lr"]) == pytest.approx(float(started[member]), rel=1e-2)
    # Its curve goes on from the donor's epoch 2: one value per epoch, the new lr after it.
    lr = client.get_metric_history(run.info.run_id, "lr")
    assert [m.step for m in lr] == [1, 2, 3, 4]
    assert [m.value for m in lr][:2] == pytest.approx([float(started[member])] * 2, rel=1e-2)
    assert [m.value for m in lr][2:] == pytest.approx([new_lr] * 2, rel=1e-2)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == \
        [1, 2, 3, 4]
    beta1 = client.get_metric_history(run.info.run_id, "beta1")  # Adam's values per epoch
    assert [m.step for m in beta1] == [1, 2, 3, 4]
    assert [m.value for m in beta1][2:] == pytest.approx([new_beta1] * 2, rel=1e-4)
    # Ray's own record of the member agrees: epochs 1-4 once each, 3 and 4 after the copy.
    rows = [json.loads(line) for line in
            (tmp_path / "runs" / "pbt" / f"trial_{member}" / "result.json").read_text()
            .splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["lr"] == pytest.approx(new_lr, rel=1e-2)
