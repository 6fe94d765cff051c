"""A search that learns from earlier ones: `search.warm_start: [runs/NAME, ...]`.

Each source is a search folder this project wrote (its `search.yaml` and its Optuna study).
Its finished trials, completed and pruned, are mapped into this search's space:

- only the keys this space has carry over; a key the source fixed takes the source's value;
- a value outside this space's bounds or choices drops the trial, and so does a value that
  differs from one this space fixes;
- each kept value is re-expressed in this space's Optuna distribution (so a changed log flag
  or changed choices never meet in one study: the value either fits the new one or the
  trial is dropped).

`search.warm_start_top: K` runs the sources' K best completed configurations first (ahead of
`points_to_evaluate`); `search.warm_start_history` adds every kept trial, with its per-epoch
values, to this search's study, so that TPE and GP count them among their start-up trials
and model them. Imported trials carry the user attribute `warm_start` (their source) and
never reach Ray: ranking, best.yaml, the champion, the plots and MLflow's children are this
search's own trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from search import config as config_
from search import optuna_search
from search.config import ConfigError, SearchConfig
from search.optuna_search import JOURNAL, WARM_ATTR
from search.record.store import REDACTED
from search.space import DefineByRun, distribution, holds
from search.space_rules import ADAM_KEYS, Range, same_value

SOURCE_ATTR = WARM_ATTR  # an imported trial's user attribute: the folder it came from
SAVED_CONFIG = "search.yaml"  # search.run's copy of a search's config, in its folder
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def config_value(cfg: SearchConfig, name: str) -> Any:
    """The value a search's config gives key `name` of a space when it does not search it."""
    raw = cfg.model_dump(mode="json")
    node: Any = raw
    for part in ADAM_KEYS.get(name, name).split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return 1.0 - node if name == "one_minus_beta2" else node


_MISSING = object()


def mapped(trial: FrozenTrial, source: SearchConfig, space: dict[str, Range],
           order: list[str]) -> tuple[dict[str, Any], dict[str, BaseDistribution]] | str:
    """A source trial's params and distributions in this space, or why it is dropped."""
    fixed_there = {n: r.candidates()[0] for n, r in source.space.keys().items() if r.fixed}
    sample: dict[str, Any] = {}
    params: dict[str, Any] = {}
    dists: dict[str, BaseDistribution] = {}
    for name in order:
        r = space[name]
        if not holds(r, sample):
            continue
        value = trial.params.get(name, fixed_there.get(name, config_value(source, name)))
        if value is _MISSING:
            return f"no value of {name}"
        if r.fixed:
            if not same_value(value, r.candidates()[0]):
                return f"{name} is not {r.candidates()[0]!r}, the value this space fixes"
        else:
            dist = distribution(r)
            if not _inside(dist, value):
                return f"{name} outside this space"
            params[name], dists[name] = value, dist
        sample[name] = value
    return params, dists


def _inside(dist: BaseDistribution, value: Any) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


@dataclass
class Warm:
    """What the sources give this search."""

    history: list[FrozenTrial] = field(default_factory=list)  # for the study
    top: list[dict[str, Any]] = field(default_factory=list)  # points to run first
    lines: list[str] = field(default_factory=list)  # one per source, said at the start

    def tags(self) -> dict[str, str]:
        return {f"warm_start.{i}": line for i, line in enumerate(self.lines)}


def load(cfg: SearchConfig, here: Path) -> Warm:
    """The sources of `cfg.search.warm_start` read and mapped into `cfg`'s space; a source
    this search cannot learn from is a ConfigError naming it. `here`: this search's folder."""
    warm = Warm()
    s = cfg.search
    space = cfg.space.keys()
    order = DefineByRun(cfg.space).order
    ranked: list[tuple[float, dict[str, Any]]] = []
    for given in s.warm_start:
        folder = Path(given).expanduser().resolve()
        label = f"search.warm_start {given}"
        source, trials = _read(folder, label, here)
        if (source.search.metric, source.search.mode) != (s.metric, s.mode):
            raise ConfigError(f"{label}: searched {source.search.metric} ({source.search.mode})"
                              f", this search {s.metric} ({s.mode})")
        finished = [t for t in trials if t.state in FINISHED and
                    SOURCE_ATTR not in t.user_attrs]
        if not finished:
            raise ConfigError(f"{label}: no finished trials")
        why: dict[str, int] = {}
        kept = 0
        for t in finished:
            out = mapped(t, source, space, order)
            if isinstance(out, str):
                why[out] = why.get(out, 0) + 1
                continue
            kept += 1
            params, dists = out
            if t.state == TrialState.COMPLETE:
                ranked.append((t.value if s.mode == "min" else -t.value, params))
            if s.warm_start_history:
                warm.history.append(optuna.trial.create_trial(
                    state=t.state, value=t.value if t.state == TrialState.COMPLETE else None,
                    params=params, distributions=dists,
                    intermediate_values=dict(t.intermediate_values),
                    user_attrs={SOURCE_ATTR: str(folder)}))
        dropped = "; ".join(f"{n} {w}" for w, n in sorted(why.items(), key=lambda x: -x[1]))
        warm.lines.append(
            f"{given}: {len(finished)} finished trials, {kept} kept"
            + (f", {sum(why.values())} dropped ({dropped})" if why else ""))
    ranked.sort(key=lambda x: x[0])
    warm.top = [p for _, p in ranked[:s.warm_start_top]]
    if not s.warm_start_history:
        warm.lines.append("history not given to the sampler (search.warm_start_history)")
    return warm


def _read(folder: Path, label: str, here: Path) -> tuple[SearchConfig, list[FrozenTrial]]:
    """A source folder's config and its study's trials, read without writing."""
    if folder == here.resolve():
        raise ConfigError(f"{label}: is this search itself")
    saved = folder / SAVED_CONFIG
    if not saved.is_file():
        raise ConfigError(f"{label}: no search there ({saved} does not exist)")
    source = config_.validate(SearchConfig, config_.read_yaml(saved), str(saved))
    url = source.search.optuna_storage
    journal = Path(url) if url and "://" not in url else folder / JOURNAL
    if url and "://" in url and REDACTED in url:
        raise ConfigError(f"{label}: its study's database password is not stored")
    if "://" not in (url or "") and not journal.is_file():
        raise ConfigError(f"{label}: no Optuna study there ({journal} does not exist)")
    try:  # the storage as the source search opened it
        study = optuna.load_study(study_name=source.name or folder.name,
                                  storage=optuna_search.storage(url, folder))
    except KeyError:
        raise ConfigError(f"{label}: its study {source.name or folder.name!r} is not in "
                          "its storage") from None
    return source, study.get_trials(deepcopy=False)
