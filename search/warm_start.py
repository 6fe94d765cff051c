"""A search that learns from earlier ones: `search.warm_start: [SOURCE, ...]`.

A source is one of:
- a search folder this project wrote, `runs/NAME` (its `search.yaml` and its Optuna study);
- an Optuna study, `{optuna_storage: URL or journal file, study: NAME}`: this project's
  (its config rides in the study's user attribute `search_config`) or anyone's (its
  direction and metric name, where set, are checked; its params named as this space's);
- an MLflow experiment, `{mlflow_experiment: NAME, tracking_uri: URI}` (this search's
  tracking URI if not given): this project's searches there (each parent run's
  `config.yaml` and `search.metric`; each child's params, outcome tag and per-epoch metric),
  or any FINISHED runs that logged the metric, taken as completed. MLflow holds params as
  text with 3 significant digits (`lr=0.00506`): such a history is that close.

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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from search import config as config_
from search import optuna_search
from search.config import ConfigError, SearchConfig, WarmSource
from search.optuna_search import JOURNAL, WARM_ATTR
from search.record.store import REDACTED, default_tracking_uri, redact
from search.space import DefineByRun, distribution, holds
from search.space_rules import ADAM_KEYS, Range, same_value

SOURCE_ATTR = WARM_ATTR  # an imported trial's user attribute: the folder it came from
SAVED_CONFIG = "search.yaml"  # search.run's copy of a search's config, in its folder
STUDY_CONFIG = "search_config"  # the study's user attribute holding its search's config
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


def mapped(trial: FrozenTrial | Past, source: SearchConfig | None, space: dict[str, Range],
           order: list[str]) -> tuple[dict[str, Any], dict[str, BaseDistribution]] | str:
    """A source trial's params and distributions in this space, or why it is dropped.
    `source`: the config it ran under (its fixed values), None where it is not known."""
    if source is None:
        fixed_there: dict[str, Any] = {}
    else:
        fixed_there = {n: r.candidates()[0] for n, r in source.space.keys().items() if r.fixed}
    sample: dict[str, Any] = {}
    params: dict[str, Any] = {}
    dists: dict[str, BaseDistribution] = {}
    for name in order:
        r = space[name]
        if not holds(r, sample):
            continue
        value = trial.params.get(name, fixed_there.get(
            name, _MISSING if source is None else config_value(source, name)))
        if value is _MISSING and source is None and r.fixed:
            value = r.candidates()[0]  # a foreign trial that did not vary it: this value
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
class Past:
    """A finished trial of a source that is not an Optuna trial (an MLflow run)."""

    params: dict[str, Any]
    state: TrialState
    value: float | None
    intermediate_values: dict[int, float]
    user_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Source:
    """What one source holds: its finished trials, each with the config it ran under."""

    origin: str  # the imported trials' user attribute: where they came from
    metric: str | None  # None: the source does not say (a foreign study or experiment)
    mode: str | None
    trials: list[tuple[FrozenTrial | Past, SearchConfig | None]]


@dataclass
class Warm:
    """What the sources give this search."""

    history: list[FrozenTrial] = field(default_factory=list)  # for the study
    top: list[dict[str, Any]] = field(default_factory=list)  # points to run first
    lines: list[str] = field(default_factory=list)  # one per source, said at the start

    def tags(self) -> dict[str, str]:
        return {f"warm_start.{i}": line for i, line in enumerate(self.lines)}


def describe(given: str | WarmSource) -> str:
    """A source as lines and errors name it (credentials removed)."""
    if isinstance(given, str):
        return given
    if given.mlflow_experiment is not None:
        at = f" at {redact(given.tracking_uri)}" if given.tracking_uri else ""
        return f"MLflow experiment {given.mlflow_experiment}{at}"
    return f"Optuna study {given.study} in {redact(given.optuna_storage)}"


def load(cfg: SearchConfig, here: Path) -> Warm:
    """The sources of `cfg.search.warm_start` read and mapped into `cfg`'s space; a source
    this search cannot learn from is a ConfigError naming it. `here`: this search's folder."""
    warm = Warm()
    s = cfg.search
    space = cfg.space.keys()
    order = DefineByRun(cfg.space).order
    ranked: list[tuple[float, dict[str, Any]]] = []
    for given in s.warm_start:
        name = describe(given)
        label = f"search.warm_start {name}"
        source = read(given, label, cfg, here)
        if source.metric not in (None, s.metric) or source.mode not in (None, s.mode):
            raise ConfigError(f"{label}: searched {source.metric or 'an unnamed metric'} "
                              f"({source.mode or s.mode}), this search {s.metric} ({s.mode})")
        finished = [(t, c) for t, c in source.trials
                    if t.state in FINISHED and SOURCE_ATTR not in t.user_attrs]
        if not finished:
            raise ConfigError(f"{label}: no finished trials")
        why: dict[str, int] = {}
        kept = 0
        for t, ran_under in finished:
            out = mapped(t, ran_under, space, order)
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
                    user_attrs={SOURCE_ATTR: source.origin}))
        dropped = "; ".join(f"{n} {w}" for w, n in sorted(why.items(), key=lambda x: -x[1]))
        warm.lines.append(
            f"{name}: {len(finished)} finished trials, {kept} kept"
            + (f", {sum(why.values())} dropped ({dropped})" if why else ""))
    ranked.sort(key=lambda x: x[0])
    warm.top = [p for _, p in ranked[:s.warm_start_top]]
    if not s.warm_start_history:
        warm.lines.append("history not given to the sampler (search.warm_start_history)")
    return warm


def read(given: str | WarmSource, label: str, cfg: SearchConfig, here: Path) -> Source:
    """One source's trials, read without writing anything."""
    if isinstance(given, str):
        return _folder(Path(given).expanduser().resolve(), label, here)
    if given.mlflow_experiment is not None:
        return _experiment(given.mlflow_experiment, given.tracking_uri
                           or cfg.mlflow.tracking_uri or default_tracking_uri(), label, cfg)
    return _study(given.optuna_storage, given.study, label, cfg, here)


def _folder(folder: Path, label: str, here: Path) -> Source:
    """A search folder: its config and its study's trials."""
    if folder == here.resolve():
        raise ConfigError(f"{label}: is this search itself")
    saved = folder / SAVED_CONFIG
    if not saved.is_file():
        raise ConfigError(f"{label}: no search there ({saved} does not exist)")
    source = config_.validate(SearchConfig, config_.read_yaml(saved), str(saved))
    study = _open_study(source.search.optuna_storage, source.name or folder.name, folder,
                        label)
    return Source(str(folder), source.search.metric, source.search.mode,
                  [(t, source) for t in study.get_trials(deepcopy=False)])


def _study(url: str, name: str, label: str, cfg: SearchConfig, here: Path) -> Source:
    """An Optuna study: this project's (with its config) or anyone's."""
    if name == cfg.name and _same_storage(url, cfg.search.optuna_storage, here):
        raise ConfigError(f"{label}: is this search itself")
    study = _open_study(url, name, here, label)
    if len(study.directions) != 1:
        raise ConfigError(f"{label}: has {len(study.directions)} objectives; this search one")
    raw = study.user_attrs.get(STUDY_CONFIG)
    source = config_.validate(SearchConfig, raw, label) if isinstance(raw, dict) else None
    metric = (study.metric_names or [None])[0] or (source.search.metric if source else None)
    mode = "max" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "min"
    return Source(f"{redact(url)}#{name}", metric, mode,
                  [(t, source) for t in study.get_trials(deepcopy=False)])


def _same_storage(url: str, ours: str | None, here: Path) -> bool:
    if "://" in url or "://" in (ours or ""):
        return url == ours
    return Path(url).expanduser().resolve() == Path(ours or here / JOURNAL).resolve()


def _open_study(url: str | None, name: str, folder: Path, label: str) -> optuna.Study:
    """The study `name` in storage `url` (None: `folder`'s journal), opened as it is: a
    missing journal or SQLite file is refused, not created."""
    if url and "://" in url and REDACTED in url:
        raise ConfigError(f"{label}: its study's database password is not stored")
    if url and url.startswith("sqlite:///"):
        missing = Path(url.removeprefix("sqlite:///"))
        missing = None if missing.is_file() else missing
    elif not url or "://" not in url:
        journal = Path(url).expanduser() if url else folder / JOURNAL
        missing = None if journal.is_file() else journal
    else:
        missing = None
    if missing is not None:
        raise ConfigError(f"{label}: no Optuna study there ({missing} does not exist)")
    try:
        return optuna.load_study(study_name=name, storage=optuna_search.storage(url, folder))
    except KeyError:
        raise ConfigError(f"{label}: its study {name!r} is not in its storage") from None
    except Exception as e:  # a database that refuses or does not answer
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{label}: cannot open it ({type(e).__name__})") from None


ROLE_SEARCH = "search"  # the `role` tag of a search's parent run (search/record/tracking.py)


def _experiment(name: str, uri: str, label: str, cfg: SearchConfig) -> Source:
    """An MLflow experiment: this project's searches there, or anyone's finished runs."""
    from mlflow.tracking import MlflowClient

    from search.record.store import existing_store
    from search.record.tracking import PARENT_TAG

    ours = cfg.mlflow.tracking_uri or default_tracking_uri()
    if name == (cfg.mlflow.experiment or cfg.name) and redact(uri) == redact(ours):
        raise ConfigError(f"{label}: is this search itself")
    client = MlflowClient(existing_store(uri, label))
    try:
        exp = client.get_experiment_by_name(name)
    except Exception as e:  # a server that does not answer
        raise ConfigError(f"{label}: cannot read it ({type(e).__name__})") from None
    if exp is None:
        raise ConfigError(f"{label}: no such experiment at {redact(uri)}")
    runs = _all_runs(client, exp.experiment_id)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("role") == ROLE_SEARCH}
    wanted = f"{cfg.search.metric} ({cfg.search.mode})"
    said = {r.data.params.get("search.metric") for r in parents.values()} - {None}
    if said and wanted not in said:
        theirs = sorted(said)[0].split(" (")
        return Source(f"mlflow:{name}", theirs[0], theirs[1].rstrip(")"), [])
    configs = {pid: _run_config(client, pid) for pid, r in parents.items()
               if r.data.params.get("search.metric") == wanted}
    trials = []
    for r in runs:
        parent = r.data.tags.get(PARENT_TAG)
        if r.info.run_id in parents or (parent in parents and parent not in configs):
            continue  # a search's parent, or a trial of a search of another metric
        past = _past(client, r, cfg, parent in parents)
        if past is not None:
            trials.append((past, configs.get(parent)))
    return Source(f"mlflow:{name}", None, None, trials)


def _all_runs(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _run_config(client, run_id: str) -> SearchConfig | None:
    """A search's config from its parent run's `config.yaml` artifact (None if absent)."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "config.yaml", tmp)
            raw = config_.read_yaml(Path(path))
        return config_.validate(SearchConfig, raw, "config.yaml")
    except Exception:  # no artifact, or one this version cannot read: no fixed values
        return None


def _past(client, run, cfg: SearchConfig, ours: bool) -> Past | None:
    """An MLflow run as a finished trial in this space's names and types, or None."""
    metric = cfg.search.metric
    how = run.data.tags.get("outcome")
    if run.info.status != "FINISHED" or metric not in run.data.metrics:
        return None
    if how not in (("completed", "pruned") if ours else ("completed", "pruned", None)):
        return None
    state = TrialState.PRUNED if how == "pruned" else TrialState.COMPLETE
    steps = {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}
    space = cfg.space.keys()
    params = {}
    for key, text in run.data.params.items():
        name, text = ("one_minus_beta2", _one_minus(text)) if key == "beta2" else (key, text)
        if name in space:
            params[name] = _typed(text, space[name])
    value = run.data.metrics[metric]
    if state == TrialState.COMPLETE and not math.isfinite(value):
        return None
    return Past(params, state, value if state == TrialState.COMPLETE else None, steps)


def _one_minus(text: str) -> str:
    try:
        return repr(1.0 - float(text))
    except ValueError:
        return text


def _typed(text: str, r: Range) -> Any:
    """A param's text (as MLflow holds it) as the value of this space's key it names."""
    from search.space import fmt

    for choice in r.candidates() if r.choices is not None or r.fixed else ():
        if text in (fmt(choice), str(choice)):
            return choice
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if r.integer and number.is_integer() else number
