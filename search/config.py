"""The configuration schema: one YAML file, validated once, passed inward as typed objects.

`TrialConfig` (data, model, optimizer, train) is everything one training run needs;
`SearchConfig` extends it with the search space and how Ray, Optuna, ASHA and MLflow
run the search. Errors become `ConfigError` with a one-line message naming the
field and the value, so the command line can print it and exit 2.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveFloat,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from search.space_rules import ADAM_KEYS, Range, bounded, check_space

DATASETS = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100")
MAX_CONFIG_BYTES = 1_000_000  # a config is a page of YAML; a bigger file is a wrong path
# A search name becomes a folder under the storage path and an MLflow experiment: one path
# component of letters, digits, '.', '_' and '-', starting with a letter or digit.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


NAME_RULE = ("letters, digits, '.', '_' and '-', starting with a letter or digit, at most "
             "128 characters")


def check_name(name: str, field: str) -> str:
    """A search name that stays inside its folder, or a ConfigError naming `field`."""
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{field} {name!r}: a search name is one folder name: {NAME_RULE}")
    return name


def _safe(name: str | None, what: str) -> str | None:
    """A pydantic validator's check of a name: `what` says what the name is."""
    if name is not None and not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{what}: {NAME_RULE}")
    return name


class ConfigError(Exception):
    """Bad configuration or command-line input; the message is one line for the user."""


class Section(BaseModel):
    """A config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- one trial


def _is_import_path(name: str) -> bool:
    """`package.module:attribute`, as models, data.dataset and train.task take user code."""
    module, sep, attr = name.partition(":")
    return bool(sep) and all(part.isidentifier() for part in (*module.split("."), attr))


def import_attribute(name: str, field: str) -> Any:
    """What the import path `package.module:attribute` names; ConfigError naming `field`
    and why it does not import (the user's module: any failure is theirs to see)."""
    import importlib

    module_name, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{field} {name!r}: cannot import it: "
                          f"{type(e).__name__}: {e}") from None


class DataConfig(Section):
    # A built-in dataset, `imagefolder` (data.root), or `package.module:function`.
    dataset: str = "digits"
    root: str = "data"  # torchvision datasets, or the image folder
    download: bool = False
    val_fraction: float = Field(0.2, gt=0, lt=1)  # carved from the training set
    split_seed: int = 0  # same split for every trial, so their val_acc compare
    crop_padding: int = Field(0, ge=0)  # random crop after padding by this many pixels
    flip: bool = False  # random horizontal flip
    synthetic_samples: int = Field(2048, ge=2)
    synthetic_shape: tuple[int, int, int] = (3, 32, 32)  # channels, height, width
    synthetic_classes: int = Field(10, ge=2)
    image_size: int | None = Field(None, ge=1)  # imagefolder: resize to this square side
    channels: Literal[1, 3] | None = None  # imagefolder: greyscale or RGB (None: as found)
    kwargs: dict[str, Any] = {}  # passed to a `package.module:function` dataset

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in (*DATASETS, "imagefolder") and not _is_import_path(name):
            raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, "
                             "imagefolder, or an import path package.module:function")
        return name


class ModelConfig(Section):
    # A registered model (models.names()) or the user's `package.module:factory`.
    name: str = "mlp"
    kwargs: dict[str, Any] = {}  # passed to the factory besides num_classes, in_channels, ...

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        import models

        if name not in models.names() and not _is_import_path(name):
            raise ValueError(f"unknown model {name!r}; known: {', '.join(models.names())}, "
                             "or an import path package.module:factory")
        return name


class OptimizerConfig(Section):
    name: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    amsgrad: bool = False
    foreach: bool | None = None  # None: optim.Adam chooses
    fused: bool | None = None  # True: torch.compile'd step on CPU, Triton kernel on CUDA
    state_dtype: Literal["fp32", "bf16", "int8"] = "fp32"  # how the moments are stored
    # With several workers per trial: ZeRO-1, each rank keeps the Adam state of its share of
    # the parameters only (torch's ZeroRedundancyOptimizer around optim.Adam). One process
    # (one worker, `search.train`) has nothing to share: its state stays whole.
    shard_state: bool = False

    @model_validator(mode="after")
    def _paths_compatible(self) -> OptimizerConfig:
        # The same rules optim.Adam enforces, checked before any trial starts.
        if self.fused and self.foreach:
            raise ValueError("fused and foreach cannot both be true")
        if self.foreach and self.state_dtype != "fp32":
            raise ValueError(f"foreach supports state_dtype fp32 only, got {self.state_dtype}")
        if self.shard_state and self.state_dtype != "fp32":
            # ZeRO consolidates the ranks' shards into one plain optimizer state dict; only
            # fp32 moments are tested to survive that and to load into any other trial.
            raise ValueError(f"shard_state supports state_dtype fp32 only, got "
                             f"{self.state_dtype}")
        return self


class Phase(Section):
    """From `epoch` on, Adam's values and the gradient clip given here (PBT's winning
    schedule in best.yaml, issue 26); a value not given stays as it was, and
    `grad_clip: null` given turns clipping off."""

    epoch: int = Field(ge=2)
    lr: float | None = Field(None, gt=0)
    beta1: float | None = Field(None, ge=0, lt=1)
    beta2: float | None = Field(None, ge=0, lt=1)
    eps: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    grad_clip: float | None = Field(None, gt=0)

    @model_serializer(mode="wrap")
    def _given_only(self, handler: Any) -> dict[str, Any]:
        # What was not given stays as it was: written back, it must stay not given.
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_fraction: float = Field(0.25, gt=0, lt=1)  # onecycle: share of steps warming up
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)  # max global grad norm; None: no clipping
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile the model
    # The user's training task, `package.module:Class` (search/trial/task.py); None: image
    # classification of `data.dataset` (search/trial/image_task.py).
    task: str | None = None
    task_kwargs: dict[str, Any] = {}  # passed to the task's constructor besides `device`
    # A schedule of Adam's values over the epochs: the values above until the first phase.
    phases: list[Phase] = []

    @model_validator(mode="after")
    def _phases_in_order(self) -> TrainConfig:
        last = 1
        for i, phase in enumerate(self.phases):
            if phase.epoch <= last or phase.epoch > self.epochs:
                raise ValueError(f"phases[{i}].epoch {phase.epoch}: phases start at epochs "
                                 f"in increasing order, from 2 to train.epochs "
                                 f"({self.epochs})")
            last = phase.epoch
        return self

    @field_validator("task")
    @classmethod
    def _task_path(cls, name: str | None) -> str | None:
        if name is not None and not _is_import_path(name):
            raise ValueError(f"{name!r} is not an import path package.module:Class")
        return name


class TrialConfig(Section):
    """Everything `python -m search.train` needs to train one configuration."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    # Folders the user's plug-in model or dataset module is imported from (put first on
    # sys.path). Filled in by a search for plug-ins found beside its config, so that
    # best.yaml retrains anywhere the folders are; trials get the code through Ray.
    code: list[str] = []


# ---------------------------------------------------------------- the search


_ADAM_RULES = {
    "lr": ("> 0", lambda v: v > 0),
    "beta1": ("in [0, 1)", lambda v: 0 <= v < 1),
    "one_minus_beta2": ("in (0, 1]", lambda v: 0 < v <= 1),
    "eps": ("> 0", lambda v: v > 0),
    "weight_decay": (">= 0", lambda v: v >= 0),
}


class SpaceConfig(Section):
    """The Optuna search space: the five Adam keys by their short names, and any other
    field of a trial's config by its dotted path (`train.batch_size`, `model.kwargs.width`),
    in the order given. Paths are checked against the config in `SearchConfig`."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, Range] = Field(init=False)

    lr: Range = Range(low=1e-4, high=1e-1, log=True)
    beta1: Range = Range(low=0.8, high=0.99)
    one_minus_beta2: Range = Range(low=1e-4, high=1e-1, log=True)
    eps: Range = Range(low=1e-10, high=1e-6, log=True)
    weight_decay: Range = Range(value=0.0)

    def keys(self) -> dict[str, Range]:
        """Every key of the space, the Adam ones first: {name or dotted path: range}."""
        return {**{name: getattr(self, name) for name in ADAM_KEYS},
                **(self.__pydantic_extra__ or {})}

    @model_validator(mode="after")
    def _within_domain(self) -> SpaceConfig:
        for name, (rule, ok) in _ADAM_RULES.items():
            r = getattr(self, name)
            values = r.candidates()
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in values):
                raise ValueError(f"{name} must be a number, got {values}")
            if not all(ok(v) for v in values):
                lo, hi = (r.bounds() if not r.categorical else (min(values), max(values)))
                raise ValueError(f"{name} must be {rule}, got [{lo}, {hi}]")
        return self


class WarmSource(Section):
    """An earlier search held elsewhere than a search folder: an Optuna study (its storage
    URL or journal file, and its name), or an MLflow experiment (its name, at
    `tracking_uri`, by default this search's)."""

    optuna_storage: str | None = None
    study: str | None = None
    mlflow_experiment: str | None = None
    tracking_uri: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> WarmSource:
        study = self.optuna_storage is not None or self.study is not None
        if study == (self.mlflow_experiment is not None):
            raise ValueError("give either optuna_storage and study, or mlflow_experiment")
        if study and not (self.optuna_storage and self.study):
            raise ValueError("an Optuna source needs both optuna_storage and study")
        if study and self.tracking_uri is not None:
            raise ValueError("tracking_uri goes with mlflow_experiment")
        return self


# A warm-start source: a folder's path, or the mapping of another kind (no union's noise in
# the errors: the entry is read as one or the other).
WarmEntry = Annotated[
    Annotated[str, Tag("folder")] | Annotated[WarmSource, Tag("source")],
    Discriminator(lambda v: "folder" if isinstance(v, str) else "source")]


class SearchSection(Section):
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0
    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
    # tpe: multivariate TPE; gp: Optuna's Gaussian-process sampler; random (search/strategy.py).
    # random: with ASHA it reached the targets of bench.search's replays most reliably
    # (bench/RESULTS.md, 2026-11-27); TPE with ASHA missed them in up to 3 runs of 4.
    sampler: Literal["tpe", "gp", "random"] = "random"
    n_startup_trials: int = Field(4, ge=0)  # random trials before TPE (or GP) models the space
    max_failures: int = Field(2, ge=0)  # retries of a trial that dies (from its checkpoint)
    # Seconds of training between a trial's checkpoints (besides ASHA's rungs and the last
    # epoch, which always get one); null: adaptive, checkpoints take <= 5% of the time.
    checkpoint_period_s: float | None = Field(None, ge=0)
    # Where the Optuna study lives: an Optuna RDB URL (sqlite:///..., postgresql://...) or
    # a journal file path; null: runs/NAME/optuna.journal. Open it with optuna.load_study
    # or optuna-dashboard; --resume keeps using it.
    optuna_storage: str | None = None
    # When the search stops besides num_samples (search/lifecycle.py): after this many wall
    # seconds of a run of the command; once a trial that ran every epoch reaches `goal` in
    # `metric`; once `patience_trials` trials in a row did not improve the best.
    time_budget_s: float | None = Field(None, gt=0)
    goal: float | None = Field(None, allow_inf_nan=False)
    patience_trials: int | None = Field(None, ge=1)
    # Earlier searches this one learns from, same metric and mode (search/warm_start.py):
    # their folders (runs/NAME), Optuna studies ({optuna_storage: URL, study: NAME}) or
    # MLflow experiments ({mlflow_experiment: NAME, tracking_uri: URI}). Their K best
    # completed configurations run first; with `warm_start_history` every finished trial of
    # theirs that fits this space joins the study, for the sampler to model. History is off
    # by default: replayed (bench/RESULTS.md), it made TPE and GP up to 4.7x slower when the
    # source was another task, and added nothing to the top-K's gain on the same task.
    warm_start: list[WarmEntry] = []
    warm_start_top: int = Field(2, ge=0)
    warm_start_history: bool = False
    # Adam's textbook defaults make a good first point.
    # Keys as in space: short Adam names or dotted paths.
    points_to_evaluate: list[dict[str, Any]] = [
        {"lr": 1e-3, "beta1": 0.9, "one_minus_beta2": 1e-3, "eps": 1e-8}
    ]


class SchedulerConfig(Section):
    # asha: Ray's ASHA stops weak trials early; fifo: every trial trains the full budget;
    # pbt: population-based training (search/pbt_scheduler.py), the population of
    # search.num_samples trains together and every `perturbation_interval` epochs the weakest
    # `quantile_fraction` copy a top member's weights and Adam state and explore its values;
    # pb2: the same, with the new values chosen by a GP bandit within the space's bounds
    # (search/pb2_scheduler.py) instead of perturbed at random.
    name: Literal["asha", "fifo", "pbt", "pb2"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs every trial gets before it can be pruned
    # 4: of 2, 3 and 4 (grace 1 and 2), the one whose replays never lost the top targets
    # (bench/RESULTS.md, 2026-11-27).
    reduction_factor: float = Field(4, gt=1)
    # Ray's ASHA with this many Hyperband-style brackets (bracket s starts judging at
    # grace_period * reduction_factor**s epochs); 1: plain ASHA.
    brackets: int = Field(1, ge=1)
    # PBT and PB2 (Ray's PopulationBasedTraining's own defaults, with the interval in
    # epochs; PB2 uses neither the resample probability nor the factors).
    perturbation_interval: int = Field(2, ge=1)
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)
    perturbation_factors: tuple[PositiveFloat, PositiveFloat] = (1.2, 0.8)
    # true: every member waits at each interval for the whole population (needs all of it
    # running at once); false: each member is judged when it reaches an interval.
    synch: bool = False

    @property
    def population_based(self) -> bool:
        """PBT or PB2: a population trained together, members copying members."""
        return self.name in ("pbt", "pb2")


class ResourcesConfig(Section):
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)  # fractional: several trials share a GPU
    # More than 1: each trial is a data-parallel Ray Train run of this many workers (DDP,
    # gloo on CPU, nccl on CUDA), each with the resources below (None: the per-trial ones).
    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float | None = Field(None, gt=0)
    gpus_per_worker: float | None = Field(None, ge=0)

    @property
    def distributed(self) -> bool:
        return self.workers_per_trial > 1

    def worker(self) -> dict[str, float]:
        """What each process of a trial asks Ray for: {"CPU": .., "GPU": ..}."""
        if not self.distributed:
            return {"CPU": self.cpus_per_trial, "GPU": self.gpus_per_trial}
        cpus = self.cpus_per_worker if self.cpus_per_worker is not None else self.cpus_per_trial
        gpus = self.gpus_per_worker if self.gpus_per_worker is not None else self.gpus_per_trial
        return {"CPU": cpus, "GPU": gpus}


class MlflowConfig(Section):
    tracking_uri: str | None = None  # None: sqlite:///mlflow.db in the working directory
    experiment: str | None = None  # None: the search's name
    register_as: str | None = None  # registered model name for the best checkpoint
    # When the new version takes the `champion` alias: if_better (at least as good as the
    # current champion on the same metric and validation data), always, or never (it gets
    # the `challenger` alias instead).
    promote: Literal["if_better", "always", "never"] = "if_better"

    @field_validator("register_as")
    @classmethod
    def _model_name(cls, name: str | None) -> str | None:
        # Stricter than MLflow, which would refuse some names only once the search is over.
        return _safe(name, "a model name is")


class RayConfig(Section):
    address: str | None = None  # None: start Ray on this machine
    # Folders (packages) or importable package names shipped to every worker through Ray's
    # runtime_env, for plug-in models and datasets; their own packages are shipped anyway.
    py_modules: list[str] = []


class DeployConfig(Section):
    """`python -m search.deploy`: which formats to make, and how to measure them."""

    int8: bool = False  # also ONNX Runtime static int8, kept only if accurate enough
    max_accuracy_drop: float = Field(0.5, ge=0, le=100)  # percentage points of val_acc
    # A train.task's champion: how much int8 may worsen search.metric, in its own units
    # (None: int8 is refused, there being no bound to judge it by).
    max_metric_change: float | None = Field(None, ge=0)
    calibration_images: int = Field(256, ge=1)  # training images that calibrate int8
    threads: int = Field(2, ge=1)  # intra-op threads of every runtime in the benchmark
    rounds: int = Field(100, ge=1)  # timed calls per runtime and batch size
    compile: bool = True  # torch.compile (with freezing on CPU) in the benchmark


class SearchConfig(TrialConfig):
    """A whole search: the trial sections plus space, search, scheduler, resources, ..."""

    name: str | None = None  # None: the config file's stem
    space: SpaceConfig = SpaceConfig()
    search: SearchSection = SearchSection()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    mlflow: MlflowConfig = MlflowConfig()
    ray: RayConfig = RayConfig()
    deploy: DeployConfig = DeployConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str | None) -> str | None:
        return _safe(name, "a search name is one folder name")

    @model_validator(mode="after")
    def _grace_within_epochs(self) -> SearchConfig:
        if self.scheduler.grace_period > self.train.epochs:
            raise ValueError(
                f"scheduler.grace_period {self.scheduler.grace_period} > "
                f"train.epochs {self.train.epochs}"
            )
        return self

    @model_validator(mode="after")
    def _pbt_can_work(self) -> SearchConfig:
        """PBT configs that could never perturb, or would wait forever."""
        s, sch = self.search, self.scheduler
        if not sch.population_based:
            return self
        if sch.perturbation_interval >= self.train.epochs:
            raise ValueError(f"scheduler.perturbation_interval {sch.perturbation_interval} >= "
                             f"train.epochs {self.train.epochs}: no member would ever be "
                             "perturbed")
        if s.num_samples < 2:
            raise ValueError(f"search.num_samples {s.num_samples}: a PBT population needs at "
                             "least 2 members")
        if sch.synch and s.max_concurrent < s.num_samples:
            raise ValueError(f"search.max_concurrent {s.max_concurrent} < search.num_samples "
                             f"{s.num_samples} with scheduler.synch: true; synchronous PBT "
                             "runs the whole population at once")
        if s.sampler != "random":
            raise ValueError(f"search.sampler {s.sampler} with scheduler.name {sch.name}: its "
                             "population is drawn at random (seeded by search.seed), and it "
                             "then explores by itself; use search.sampler: random, or asha "
                             "or fifo to have TPE or GP choose the trials")
        if self.resources.distributed:
            raise ValueError(f"resources.workers_per_trial {self.resources.workers_per_trial} "
                             f"with scheduler.name {sch.name}: it runs one-worker trials")
        if sch.name == "pb2" and not bounded(self.space.keys()):
            raise ValueError("scheduler.name pb2: space has no continuous range of "
                             "Adam's values or train.grad_clip without a condition for "
                             "PB2 to choose within; search one, or use pbt")
        return self

    @model_validator(mode="after")
    def _space_fits_config(self) -> SearchConfig:
        check_space(self)
        return self

    @model_validator(mode="after")
    def _workers_share_the_batch(self) -> SearchConfig:
        workers = self.resources.workers_per_trial
        if self.train.batch_size % workers:
            # train.batch_size is the global batch: each worker takes an equal part of it,
            # so a search over several workers is the same problem as over one.
            raise ValueError(f"train.batch_size {self.train.batch_size} is not a multiple of "
                             f"resources.workers_per_trial {workers}")
        return self

    def trial(self) -> TrialConfig:
        """The single-run part of this config."""
        return TrialConfig(**{k: getattr(self, k) for k in TrialConfig.model_fields})


# ---------------------------------------------------------------- loading


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; missing, empty or malformed files are ConfigErrors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes; a config is at most "
                          f"{MAX_CONFIG_BYTES} bytes")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if raw is None:
        raise ConfigError(f"{path}: empty config file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b=value` overrides (value parsed as YAML) to a config dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
        node = raw
        parts = key.split(".")
        while len(parts) > 1:
            # A space key is a dotted path itself: the longest key the node has comes first
            # (space.train.batch_size.high); a new one under `space` is the rest, whole.
            n = next((n for n in range(len(parts) - 1, 0, -1) if ".".join(parts[:n]) in node),
                     None)
            if n is None and node is raw.get("space"):
                parts = [".".join(parts)]
                break
            part, parts = ".".join(parts[:n or 1]), parts[n or 1:]
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            if node is raw.get("space") and parts == ["value"]:
                child.clear()  # a fixed value replaces the key's range or choices
            node = child
        node[parts[0]] = value
    return raw


def _set_searched(cfg: Any, overrides: list[str]) -> None:
    """`--set P=V` on a path the space samples in every trial contradicts the space: refused,
    naming how to fix the key instead. (A key sampled only `when:` something holds keeps
    the config's value elsewhere, so setting that value is fine.)"""
    space = cfg.space.keys() if hasattr(cfg, "space") else {}
    for item in overrides:
        key, _, text = item.partition("=")
        r = space.get(key)
        if r is not None and not r.fixed and not r.when and key not in ADAM_KEYS:
            raise ConfigError(f"--set {item}: {key} is searched by space.{key}; to fix it, "
                              f"--set space.{key}.value={text}")


def _one_line(error: ValidationError, source: str) -> str:
    problems = []
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        shown = err.get("input")
        text = f"{field}: {msg}"
        if not isinstance(shown, dict) and err["type"] != "missing":
            text += f" (got {shown!r})"
        problems.append(text)
    return f"{source}: " + "; ".join(problems)


def validate(model: type[Section], raw: dict[str, Any], source: str) -> Any:
    """Validate a dict against a schema, turning pydantic's report into one line."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e, source)) from None


def load(path: str | Path, overrides: list[str] = (), schema: type[Section] = SearchConfig):
    """Read, override and validate a config file.

    Overrides apply to the complete config, defaults filled in, so `--set space.lr.low=0.01`
    changes one bound of the default range rather than replacing the range.
    """
    raw = read_yaml(path)
    if overrides:
        complete = validate(schema, raw, str(path)).model_dump(mode="json", exclude_none=True)
        raw = apply_overrides(complete, list(overrides))
    cfg = validate(schema, raw, str(path))
    _set_searched(cfg, list(overrides))
    return cfg


def dump(config: Section) -> str:
    """YAML text of a config that `load` reads back to an equal config."""
    raw = config.model_dump(mode="json")
    if raw.get("code") == []:  # only plug-in searches have code folders to name
        del raw["code"]
    if raw.get("train", {}).get("phases") == []:  # only PBT's best.yaml has phases
        del raw["train"]["phases"]
    return yaml.safe_dump(raw, sort_keys=False)
