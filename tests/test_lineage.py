"""A PBT winner's lineage (search/record/lineage.py): the donors its weights came from,
the values each epoch was trained with, best.yaml's phases and the schedules plot."""

from __future__ import annotations

from dataclasses import dataclass, field

from search.config import SearchConfig
from search.record import lineage, schedule_plot


@dataclass
class Ex:
    trial: str
    donor: str
    epoch: int
    old: dict = field(default_factory=dict)
    new: dict = field(default_factory=dict)


A = {"lr": 0.01, "beta1": 0.9, "one_minus_beta2": 0.001, "eps": 1e-8}
B = {"lr": 0.003, "beta1": 0.8, "one_minus_beta2": 0.01, "eps": 1e-8}
C = {"lr": 0.0001, "beta1": 0.95, "one_minus_beta2": 0.001, "eps": 1e-7}
# c copies b at epoch 2 (new values c2); later a copies c at epoch 4 (new values a4).
C2 = {**B, "lr": 0.0036}
A4 = {**C2, "lr": 0.0029, "beta1": 0.85}
EXPLOITS = [Ex("c", "b", 2, C, C2), Ex("a", "c", 4, A, A4)]
NOW = {"a": A4, "b": B, "c": C2}


def test_the_lineage_follows_the_donors_back_to_epoch_1():
    segments = lineage.lineage("a", 6, NOW, EXPLOITS)
    assert segments == [lineage.Segment(1, 2, "b", B), lineage.Segment(3, 4, "c", C2),
                        lineage.Segment(5, 6, "a", A4)]
    # A member that copied no one is its own lineage, with the values it has.
    assert lineage.lineage("b", 6, NOW, EXPLOITS) == [lineage.Segment(1, 6, "b", B)]
    # The values a member started with: before its first exploit.
    assert lineage.first_values("a", A4, EXPLOITS) == A
    assert lineage.describe(segments, ["lr"]).startswith(
        "epochs 1-2: trial b (lr 0.003); epochs 3-4: trial c (lr 0.0036)")
    assert lineage.describe([lineage.Segment(5, 5, "a", A4)], ()) == "epoch 5: trial a"


def test_best_yamls_phases_replay_the_lineage():
    cfg = SearchConfig.model_validate({"train": {"epochs": 6}})
    first, phases = lineage.phases(cfg, lineage.lineage("a", 6, NOW, EXPLOITS))
    assert first == B
    assert [p["epoch"] for p in phases] == [3, 5]
    assert phases[0]["lr"] == 0.0036 and phases[0]["beta2"] == 1 - 0.01
    assert (phases[1]["lr"], phases[1]["beta1"]) == (0.0029, 0.85)
    assert all("grad_clip" not in p for p in phases)  # unchanged: not written


def test_each_member_schedule_and_the_plot(tmp_path):
    schedule = lineage.member_schedule("a", 6, NOW, EXPLOITS)
    assert [v["lr"] for _, v in schedule] == [0.01] * 4 + [0.0029] * 2
    schedules = {t: lineage.member_schedule(t, 6, NOW, EXPLOITS) for t in NOW}
    assert schedule_plot.varying(schedules, ["lr", "eps", "beta1"]) == ["lr", "eps", "beta1"]
    assert schedule_plot.varying({"b": schedules["b"]}, ["lr"]) == []
    path = tmp_path / "pbt.png"
    schedule_plot.draw(schedules, lineage.lineage("a", 6, NOW, EXPLOITS),
                       ["lr", "beta1"], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
