"""What a search space may say (`Range`, one key), checked against the config before
anything runs.

A key of `space:` is one of the five Adam short names or the dotted path of a field of a
trial's config. This module imports nothing of `search`: the config schema builds on it
and hands itself in. Every value a key can take (both bounds, every choice, the fixed value) is
put in place in the config and validated by the field's own schema, so that a space that
could sample a config no trial accepts is refused up front, with the key, the value and the
field's own complaint on one line. Conditions (`when:`) must name a searched categorical
key and values it can take, without cycles.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import itertools
import math
import typing
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

# The five Adam keys keep their short names; beta2 is searched as 1 - beta2 (log scale).
ADAM_KEYS = {"lr": "optimizer.lr", "beta1": "optimizer.beta1",
             "one_minus_beta2": "optimizer.beta2", "eps": "optimizer.eps",
             "weight_decay": "optimizer.weight_decay"}


class Range(BaseModel):
    """One key of the space: a float or int range, a choice among scalars, or a fixed value.

    Ranges include both bounds, as Optuna's suggest_float and suggest_int do. `when` samples
    the key only where other (categorical) keys took the given values; elsewhere the
    config's own value stands.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              serialize_by_alias=True)

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    integer: bool = Field(False, alias="int")
    choices: list[Any] | None = None
    value: Any = None
    when: dict[str, Any] = {}

    @model_serializer(mode="wrap")
    def _given_only(self, handler: Any) -> dict[str, Any]:
        # Only what the key says: a `value: null` stays (a fixed None), an unset one goes,
        # so that the dump reads back to the same key.
        defaults = {"low": None, "high": None, "log": False, "step": None, "int": False,
                    "integer": False, "choices": None, "when": {}}
        out = {k: v for k, v in handler(self).items()
               if k != "value" and (k not in defaults or v != defaults[k])}
        if "value" in self.model_fields_set:
            out["value"] = self.value
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Range:
        ranged = self.low is not None or self.high is not None
        if "value" in self.model_fields_set:
            if ranged or self.choices is not None:
                raise ValueError("give either value or low/high, not both")
            _check_scalar(self.value, "value")
            return self
        if self.choices is not None:
            if ranged or self.log or self.step is not None or self.integer:
                raise ValueError("choices take no low, high, log, step or int")
            if not self.choices:
                raise ValueError("choices: empty; give at least one")
            seen = set()
            for c in self.choices:
                _check_scalar(c, "choices")
                if (type(c), c) in seen:
                    raise ValueError(f"choices: {c!r} given twice")
                seen.add((type(c), c))
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (or a fixed value, or choices)")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite, got {self.low}, {self.high}")
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log range needs low > 0, got low {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step do not go together (Optuna samples either)")
        if self.integer and not all(float(v).is_integer()
                                    for v in (self.low, self.high, self.step or 1)):
            raise ValueError(f"int: true needs integer low, high and step, got "
                             f"{self.low}, {self.high}, {self.step}")
        if self.step is not None and not _multiple(self.high - self.low, self.step):
            raise ValueError(f"high - low ({self.high} - {self.low}) is not a multiple of "
                             f"step {self.step}")
        return self

    @property
    def fixed(self) -> bool:
        """Sampled nowhere: a fixed value, one choice, or low == high."""
        if "value" in self.model_fields_set:
            return True
        if self.choices is not None:
            return len(self.choices) == 1
        return self.low == self.high

    @property
    def categorical(self) -> bool:
        return self.choices is not None

    def bounds(self) -> tuple[Any, Any]:
        """(low, high) of a range; (value, value) of a fixed key; ints for int ranges."""
        if "value" in self.model_fields_set:
            return self.value, self.value
        if self.choices is not None:
            return self.choices[0], self.choices[-1]
        if self.integer:
            return int(self.low), int(self.high)
        return self.low, self.high

    def candidates(self) -> list[Any]:
        """The values that stand for the whole key when checking it against the schema:
        every choice, both bounds, or the fixed value."""
        if self.choices is not None:
            return list(self.choices)
        lo, hi = self.bounds()
        return [lo] if lo == hi else [lo, hi]

    def contains(self, value: Any) -> bool:
        """Whether the key can take `value`."""
        if self.choices is not None:
            return any(same_value(c, value) for c in self.choices)
        lo, hi = self.bounds()
        if lo == hi:
            return value == lo
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not float(value).is_integer():
            return False
        return lo <= value <= hi

    def conditions(self) -> dict[str, list[Any]]:
        """`when` with each value as a list of the values it allows."""
        return {k: v if isinstance(v, list) else [v] for k, v in self.when.items()}


def _check_scalar(value: Any, what: str) -> None:
    if not (value is None or isinstance(value, (str, bool, int, float))):
        raise ValueError(f"{what}: {value!r} is not a scalar (a number, text, true/false "
                         "or null)")


def same_value(a: Any, b: Any) -> bool:
    """Equal as config values: 1 and 1.0 are, 1 and true are not."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return a == b and (numbers or type(a) is type(b))


def _multiple(span: float, step: float) -> bool:
    n = round(span / step)
    return math.isclose(n * step, span, rel_tol=1e-9, abs_tol=1e-12)


MAX_COMBINATIONS = 1024  # of the optimizer's searched choices, checked together
SECTIONS = ("data", "model", "optimizer", "train")  # a trial's own config
DICT_FIELDS = ("data.kwargs", "model.kwargs", "train.task_kwargs")  # the user's: any key
# Fields a space may not search, and why: each would make trials incomparable or change
# what the search itself is.
NOT_SEARCHED = {
    "train.epochs": "it is every trial's budget (ASHA's max_t); set train.epochs instead",
    "train.task": "it is what the trials learn, so trials of different tasks would not compare",
    **{f"data.{f}": "it changes the validation data, so the trials would not compare"
       for f in ("dataset", "root", "download", "val_fraction", "split_seed",
                 "synthetic_samples", "synthetic_shape", "synthetic_classes", "channels")},
}


def leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted path of a scalar field of `model`, a trial's config schema (sections
    walked into)."""
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


def field_of(schema: type[BaseModel], path: str) -> Any:
    """The pydantic FieldInfo of a dotted path, or None for a key inside a kwargs dict."""
    model: Any = schema
    info = None
    for part in path.split("."):
        info = model.model_fields[part]
        model = info.annotation
    return info


def check_path(schema: type[BaseModel], key: str) -> None:
    """A dotted path names a scalar field of a trial's config, or a ValueError."""
    for short, path in ADAM_KEYS.items():
        if key == path:
            raise ValueError(f"space.{key}: search it by its short name, space.{short}"
                             + (" (1 - beta2, on a log scale)" if short != path[10:] else ""))
    if key in NOT_SEARCHED:
        raise ValueError(f"space.{key}: not searched: {NOT_SEARCHED[key]}")
    if any(key.startswith(d + ".") and len(key) > len(d) + 1 for d in DICT_FIELDS):
        return
    leaves = leaf_paths(schema)
    if key in leaves:
        return
    known = [*ADAM_KEYS, *leaves, *(d + ".NAME" for d in DICT_FIELDS)]
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


def check_values(schema: type[BaseModel], key: str, r: Range, base: dict[str, Any]) -> None:
    """Every value `r` can take is accepted by the field's own schema in `base`."""
    info = None if any(key.startswith(d + ".") for d in DICT_FIELDS) else field_of(schema, key)
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
            schema.model_validate(put(copy.deepcopy(base), key, value))
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or key
            raise ValueError(f"space.{key}: {what} {value!r} is refused by {field}: "
                             f"{err['msg'].removeprefix('Value error, ')}") from None


def check_model_kwargs(cfg: Any, keys: list[str]) -> None:
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


def check_workers(cfg: Any, space: dict[str, Range]) -> None:
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


def check_optimizer_together(schema: type[BaseModel], space: dict[str, Range],
                             base: dict[str, Any]) -> None:
    """The optimizer's rules tie its fields (fused, foreach, state_dtype, shard_state):
    every combination of the choices searched under `optimizer.` is validated together."""
    keys = [k for k, r in space.items() if k.startswith("optimizer.") and r.categorical]
    combos = list(itertools.islice(itertools.product(*(space[k].choices for k in keys)),
                                   MAX_COMBINATIONS))
    for combo in combos if len(keys) > 1 else []:
        raw = copy.deepcopy(base)
        for key, value in zip(keys, combo, strict=True):
            put(raw, key, value)
        try:
            schema.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            said = ", ".join(f"{k}={v!r}" for k, v in zip(keys, combo, strict=True))
            raise ValueError(f"space: {said} together are refused by "
                             f"{'.'.join(str(p) for p in err['loc'])}: "
                             f"{err['msg'].removeprefix('Value error, ')}") from None


def check_space(cfg: Any) -> None:
    """A SearchConfig's whole space against its trial config, or a ValueError naming the
    key and the value."""
    space = cfg.space.keys()
    dotted = [k for k in space if k not in ADAM_KEYS]
    trial = cfg.trial()
    schema, base = type(trial), trial.model_dump(mode="json")
    for key in dotted:
        check_path(schema, key)
        check_values(schema, key, space[key], base)
    check_optimizer_together(schema, space, base)
    check_model_kwargs(cfg, dotted)
    check_conditions(space)
    check_workers(cfg, space)
    for i, point in enumerate(cfg.search.points_to_evaluate):
        check_point(i, point, space)


# What a member can change while it trains: the values `retune` puts on a loaded optimizer,
# and the gradient clip. A model's or the data's keys, the batch, the schedule's shape and
# the optimizer's kind or state layout stay as the copied weights were trained with.
EXPLORABLE = frozenset({*ADAM_KEYS, *ADAM_KEYS.values(), "train.grad_clip"})


def explorable(name: str) -> bool:
    """Whether PBT explores the key `name` (the others are copied from the donor)."""
    return name in EXPLORABLE


def bounded(keys: dict[str, Range]) -> dict[str, Range]:
    """The keys PB2 chooses within bounds: explorable, continuous, unconditional."""
    return {k: r for k, r in keys.items()
            if explorable(k) and not (r.fixed or r.categorical or r.when)}
