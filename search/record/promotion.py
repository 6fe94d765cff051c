"""Whether a search's registered version becomes `@champion`: MLflow's champion/challenger
pattern, so that a quick debugging search registered under the production name cannot
replace a better model.

Every version this project registers records what it was judged on (version tags
`judged.metric`, `judged.mode`, `judged.value`, `judged.data`: the dataset, the split seed
and a digest of the validation split itself). With `mlflow.promote: if_better` (the
default) a new version moves `@champion` only when it is at least as good as the current
champion on the same metric, mode and validation data; otherwise it gets `@challenger` and
the summary says why. `always` moves it regardless, `never` never does.

MLflow has no compare-and-set on aliases: the alias is re-read just before it is set, and
read back twice, a pause apart, so that of searches ending together the better one keeps
it (tests/test_promotion.py races eight at once). A write delayed by more than the pauses
can still land last: the pauses bound the race, they cannot close it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search.config import DataConfig, TrialConfig
from search.record.store import CHAMPION

CHALLENGER = "challenger"
POLICIES = ("if_better", "always", "never")
TAG = "judged."
SETTLE_S = 1.0  # pause before the alias is read back: a concurrent search's write lands
ATTEMPTS = 20  # re-judgements after another search moved the alias under this one
CONFIRMATIONS = 2  # reads, a pause apart, that must find the alias still on this version


@dataclass(frozen=True)
class Judged:
    """What a version was judged on, and its score there."""

    metric: str
    mode: str  # "max" or "min"
    value: float
    data: str  # the validation data's fingerprint

    def tags(self) -> dict[str, str]:
        return {f"{TAG}metric": self.metric, f"{TAG}mode": self.mode,
                f"{TAG}value": repr(self.value), f"{TAG}data": self.data}

    @classmethod
    def of(cls, tags: Mapping[str, str]) -> Judged | None:
        """From a version's tags; None for a version that records none (or a broken one)."""
        try:
            return cls(tags[f"{TAG}metric"], tags[f"{TAG}mode"], float(tags[f"{TAG}value"]),
                       tags[f"{TAG}data"])
        except (KeyError, ValueError):
            return None


def fingerprint(cfg: DataConfig) -> str:
    """The validation data a score holds for: the dataset, the split seed and a digest of
    the validation split's images and labels (which also covers val_fraction and files)."""
    from search.trial import data

    val = data.load(cfg).val
    digest = hashlib.sha256(val.x.contiguous().numpy().tobytes())
    digest.update(val.y.contiguous().numpy().tobytes())
    return f"{cfg.dataset} split_seed={cfg.split_seed} sha256:{digest.hexdigest()[:16]}"


def judged_on(trial: TrialConfig) -> str:
    """The validation data a trial's score holds for: an image classifier's `fingerprint`;
    for a training task, the task and its arguments (which choose its validation data)."""
    if trial.train.task is None:
        return fingerprint(trial.data)
    return f"{trial.train.task} {json.dumps(trial.train.task_kwargs, sort_keys=True, default=str)}"


def verdict(new: Judged, old: Judged | None, old_version: int | None,
            policy: str) -> tuple[bool, str]:
    """(move the champion alias to the new version?, why), for the new version judged as
    `new` against the current champion (`old`, None when it records nothing)."""
    if policy == "always":
        return True, "mlflow.promote: always"
    if policy == "never":
        return False, "mlflow.promote: never"
    if old_version is None:
        return True, "no champion yet"
    shown = f"champion v{old_version}"
    if old is None:
        return False, (f"kept {shown}: it records nothing it was judged on, so it cannot be "
                       "compared (mlflow.promote: always replaces it)")
    if (old.metric, old.mode) != (new.metric, new.mode):
        return False, (f"kept {shown}: it was judged on {old.metric} ({old.mode}), this "
                       f"search on {new.metric} ({new.mode}); they cannot be compared")
    if old.data != new.data:
        return False, (f"kept {shown}: it was judged on other validation data ({old.data}; "
                       f"this search: {new.data}); they cannot be compared")
    if at_least_as_good(new, old):
        return True, (f"{new.metric} {new.value:.4f} is at least as good as {shown}'s "
                      f"{old.value:.4f}")
    return False, f"kept {shown} ({old.value:.4f}) over this search's best ({new.value:.4f})"


def at_least_as_good(new: Judged, old: Judged) -> bool:
    if not math.isfinite(new.value):
        return False
    return new.value >= old.value if new.mode == "max" else new.value <= old.value


def champion(client: Any, name: str) -> tuple[int | None, Judged | None]:
    """The version `@champion` names now, and what it was judged on."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except Exception as e:  # noqa: BLE001 - MLflow: RESOURCE_DOES_NOT_EXIST, no such alias
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(
                e).lower():
            return None, None
        raise
    return int(mv.version), Judged.of(mv.tags or {})


def promote(client: Any, name: str, version: int, judged: Judged, policy: str,
            settle_s: float = SETTLE_S) -> tuple[bool, str]:
    """Tag `version` with what it was judged on, then move `@champion` to it or give it
    `@challenger`: (is it the champion, why)."""
    for key, value in judged.tags().items():
        client.set_model_version_tag(name, str(version), key, value)
    strict = False  # once another search took the alias, a tie leaves it there
    why, seen = "", 0
    for _ in range(ATTEMPTS):
        old_version, old = champion(client, name)  # re-read just before setting
        if old_version == version:
            seen += 1  # held through two pauses: a write begun before ours has landed
            if seen == CONFIRMATIONS:
                return True, why
            time.sleep(settle_s)
            continue
        seen = 0
        ok, why = verdict(judged, old, old_version, policy)
        if ok and strict and old is not None and not _better(judged, old):
            ok, why = False, f"kept champion v{old_version} ({old.value:.4f}), equal to this " \
                             f"search's best, set by another search meanwhile"
        if not ok:
            set_alias(client, name, CHALLENGER, version)
            return False, why
        set_alias(client, name, CHAMPION, version)
        time.sleep(settle_s)
        strict = True
    return champion(client, name)[0] == version, why


def set_alias(client: Any, name: str, alias: str, version: int, tries: int = 5) -> None:
    """Point `alias` at `version`; a write that met another search's write of the same
    alias at the same instant is tried again (the caller reads back who won)."""
    for i in range(tries):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except Exception as e:  # noqa: BLE001 - MlflowException wrapping the store's error
            if not _alias_race(e) or i == tries - 1:
                raise
            time.sleep(0.05 * (i + 1))


def _alias_race(error: Exception) -> bool:
    """Whether setting an alias failed because another writer set it at the same instant
    (the SQL store's insert of the alias row meets the other's: a unique constraint)."""
    text = str(error).lower()
    return "unique constraint" in text or "integrityerror" in text or "duplicate key" in text


def _better(new: Judged, old: Judged) -> bool:
    return new.value > old.value if new.mode == "max" else new.value < old.value
