"""What a search space may say, checked against the config before anything runs.

A key of `space:` is one of the five Adam short names or the dotted path of a field of a
trial's config. Every value a key can take (both bounds, every choice, the fixed value) is
put in place in the config and validated by the field's own schema, so that a space that
could sample a config no trial accepts is refused up front, with the key, the value and the
field's own complaint on one line. Conditions (`when:`) must name a searched categorical
key and values it can take, without cycles.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from search.config import ADAM_KEYS, Range, SearchConfig, TrialConfig

SECTIONS = ("data", "model", "optimizer", "train")  # a trial's own config
DICT_FIELDS = ("data.kwargs", "model.kwargs")  # the user's own arguments: any key
# Fields a space may not search, and why: each would make trials incomparable or change
# what the search itself is.
NOT_SEARCHED = {
    "train.epochs": "it is every trial's budget (ASHA's max_t); set train.epochs instead",
    **{f"data.{f}": "it changes the validation data, so the trials would not compare"
       for f in ("dataset", "root", "download", "val_fraction", "split_seed",
                 "synthetic_samples", "synthetic_shape", "synthetic_classes", "channels")},
}


def leaf_paths(model: type[BaseModel] = TrialConfig, prefix: str = "") -> list[str]:
    """Every dotted path of a scalar field of a trial's config (sections walked into)."""
    out = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        if not prefix and name not in SECTIONS:
            continue
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out += leaf_paths(info.annotation, path + ".")
        else:
            out.append(path)
    return out


def field_of(path: str) -> Any:
    """The pydantic FieldInfo of a dotted path, or None for a key inside a kwargs dict."""
    model: Any = TrialConfig
    info = None
    for part in path.split("."):
        info = model.model_fields[part]
        model = info.annotation
    return info


def check_path(key: str) -> None:
    """A dotted path names a scalar field of a trial's config, or a ValueError."""
    for short, path in ADAM_KEYS.items():
        if key == path:
            raise ValueError(f"space.{key}: search it by its short name, space.{short}"
                             + (" (1 - beta2, on a log scale)" if short != path[10:] else ""))
    if key in NOT_SEARCHED:
        raise ValueError(f"space.{key}: not searched: {NOT_SEARCHED[key]}")
    if any(key.startswith(d + ".") and len(key) > len(d) + 1 for d in DICT_FIELDS):
        return
    if key in leaf_paths():
        return
    known = [*ADAM_KEYS, *leaf_paths(), *(d + ".NAME" for d in DICT_FIELDS)]
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; nearest: {near[0]}" if near else f"; a key is a field of {', '.join(SECTIONS)}"
    if key.split(".")[0] not in SECTIONS:
        hint += " (only a trial's own config is searched)" if not near else ""
    raise ValueError(f"space.{key}: no such field of a trial's config{hint}")


def put(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`raw` (a config as plain data) with `value` at the dotted `path`, made where missing."""
    node = raw
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return raw


def _numeric(annotation: Any) -> bool:
    """Whether a field takes numbers a range can sample (int, float, optionally None)."""
    args = typing.get_args(annotation) or (annotation,)
    return all(a in (int, float, type(None)) for a in args) and any(a in (int, float)
                                                                    for a in args)


def _integer(annotation: Any) -> bool:
    args = typing.get_args(annotation) or (annotation,)
    return int in args and float not in args


def check_values(key: str, r: Range, base: dict[str, Any]) -> None:
    """Every value `r` can take is accepted by the field's own schema in `base`."""
    info = None if any(key.startswith(d + ".") for d in DICT_FIELDS) else field_of(key)
    ranged = not r.categorical and not r.fixed
    if info is not None and ranged and not _numeric(info.annotation):
        raise ValueError(f"space.{key}: a range over a field that is not a number; "
                         "give choices or a value")
    if info is not None and ranged and _integer(info.annotation) and not r.integer:
        raise ValueError(f"space.{key}: {key} takes whole numbers; add int: true")
    names = ("low", "high") if ranged else ("value",) * 2
    for i, value in enumerate(r.candidates()):
        what = "choice" if r.categorical else names[min(i, 1)]
        try:
            TrialConfig.model_validate(put(copy.deepcopy(base), key, value))
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or key
            raise ValueError(f"space.{key}: {what} {value!r} is refused by {field}: "
                             f"{err['msg'].removeprefix('Value error, ')}") from None


def check_model_kwargs(cfg: SearchConfig, keys: list[str]) -> None:
    """A searched `model.kwargs.NAME` is an argument the registered model's factory takes
    (a user's factory is checked when the driver builds it)."""
    import models

    if models.is_import_path(cfg.model.name):
        return
    params = inspect.signature(models.resolve(cfg.model.name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in keys:
        name = key.split(".")[2] if key.startswith("model.kwargs.") else None
        if name is not None and name not in params:
            takes = [p for p in params if p not in ("num_classes", "in_channels", "image_size")]
            raise ValueError(f"space.{key}: model {cfg.model.name} takes no argument {name!r}"
                             f"; it takes: {', '.join(takes) or 'none'}")


def check_conditions(space: dict[str, Range]) -> list[str]:
    """Every `when:` names a searched categorical key and values it can take; returns the
    keys in an order where each comes after the keys its condition reads."""
    import graphlib

    order = graphlib.TopologicalSorter()
    for key, r in space.items():
        order.add(key)
        for parent, values in r.conditions().items():
            p = space.get(parent)
            if p is None or p.fixed:
                raise ValueError(f"space.{key}.when: {parent} is not searched")
            if not p.categorical:
                raise ValueError(f"space.{key}.when: {parent} is not categorical (give it "
                                 "choices)")
            for v in values:
                if not p.contains(v):
                    raise ValueError(f"space.{key}.when: {parent} never takes {v!r}; its "
                                     f"choices: {p.choices}")
            order.add(key, parent)
    try:
        return list(order.static_order())
    except graphlib.CycleError as e:
        raise ValueError(f"space: conditions form a cycle: {' -> '.join(e.args[1])}") from None


def check_workers(cfg: SearchConfig, space: dict[str, Range]) -> None:
    """With several workers a trial's global batch is split evenly: every batch size the
    space can sample must divide by the worker count."""
    workers = cfg.resources.workers_per_trial
    r = space.get("train.batch_size")
    if workers == 1 or r is None:
        return
    bad = [v for v in r.candidates() if int(v) % workers]
    if not r.categorical and not r.fixed and (r.log or int(r.step or 1) % workers):
        bad = bad or [int(r.low) + 1]
    if bad:
        raise ValueError(f"space.train.batch_size: {bad[0]} is not a multiple of "
                         f"resources.workers_per_trial {workers}; give choices that are, or "
                         f"int: true with step: {workers} from a multiple of {workers}")


def check_point(i: int, point: dict[str, Any], space: dict[str, Range]) -> None:
    """A point of `search.points_to_evaluate` names keys of the space, inside their ranges."""
    for name, value in point.items():
        r = space.get(name)
        if r is None:
            near = difflib.get_close_matches(name, list(space), n=1)
            raise ValueError(f"search.points_to_evaluate[{i}]: unknown name {name!r}"
                             + (f"; nearest: {near[0]}" if near else ""))
        if r.fixed or r.contains(value):
            continue
        where = f"{r.choices}" if r.categorical else f"[{r.bounds()[0]}, {r.bounds()[1]}]"
        raise ValueError(f"search.points_to_evaluate[{i}].{name} {value} is outside "
                         f"space.{name} {where}")


def check(cfg: SearchConfig) -> None:
    """The whole space against the config, or a ValueError naming the key and the value."""
    space = cfg.space.keys()
    dotted = [k for k in space if k not in ADAM_KEYS]
    base = cfg.trial().model_dump(mode="json")
    for key in dotted:
        check_path(key)
        check_values(key, space[key], base)
    check_model_kwargs(cfg, dotted)
    check_conditions(space)
    check_workers(cfg, space)
    for i, point in enumerate(cfg.search.points_to_evaluate):
        check_point(i, point, space)
