from __future__ import annotations

import pytest

from search import config
from search.config import ConfigError, SearchConfig, TrialConfig


def test_shipped_configs_validate():
    for name in ("digits", "mnist", "cifar"):
        cfg = config.load(config.Path(f"conf/{name}.yaml"))
        assert isinstance(cfg, SearchConfig)


def test_dump_then_load_gives_the_same_config(tmp_path):
    cfg = config.load("conf/cifar.yaml", ["optimizer.lr=0.05"])
    path = tmp_path / "again.yaml"
    path.write_text(config.dump(cfg))
    assert config.load(path) == cfg
    assert cfg.optimizer.lr == 0.05


def test_trial_part_of_a_search_config_is_a_trial_config():
    cfg = config.load("conf/digits.yaml")
    trial = cfg.trial()
    assert isinstance(trial, TrialConfig) and not isinstance(trial, SearchConfig)
    assert trial.optimizer == cfg.optimizer


BAD = [
    ("optimizer: {lrr: 0.1}", "optimizer.lrr: unknown field"),
    ("colour: blue", "colour: unknown field"),
    ("optimizer: {lr: fast}", "optimizer.lr"),
    ("optimizer: {lr: -1}", "optimizer.lr"),
    ("optimizer: {beta1: 1.0}", "optimizer.beta1"),
    ("optimizer: {eps: 0}", "optimizer.eps"),
    ("optimizer: {foreach: true, state_dtype: bf16}", "foreach supports state_dtype fp32 only"),
    ("optimizer: {state_dtype: fp8}", "optimizer.state_dtype"),
    ("train: {epochs: 0}", "train.epochs"),
    ("model: {name: vgg99}", "unknown model 'vgg99'"),
    ("data: {dataset: imagenet}", "data.dataset"),
    ("space: {lr: {low: 0.1, high: 0.01}}", "low 0.1 > high 0.01"),
    ("space: {lr: {low: 0, high: 0.1, log: true}}", "log range needs low > 0"),
    ("space: {beta1: {low: 0.5, high: 1.0}}", "beta1 must be in [0, 1)"),
    ("space: {eps: {value: 0}}", "eps must be > 0"),
    ("search: {num_samples: 0}", "search.num_samples"),
    ("search: {sampler: grid}", "search.sampler"),
    ("scheduler: {name: median}", "scheduler.name"),
    ("train: {epochs: 2}\nscheduler: {grace_period: 3}", "grace_period 3 > train.epochs 2"),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1] for b in BAD])
def test_bad_config_is_one_line_naming_field_and_value(write_yaml, text, expected):
    with pytest.raises(ConfigError) as err:
        config.load(write_yaml(text))
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_set_key_is_rejected(write_yaml):
    with pytest.raises(ConfigError, match="optimizer.lrr: unknown field"):
        config.load(write_yaml("model: {name: mlp}"), ["optimizer.lrr=0.1"])


def test_set_needs_key_and_value(write_yaml):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config.load(write_yaml("model: {name: mlp}"), ["optimizer.lr"])


@pytest.mark.parametrize(
    "text,expected",
    [("", "empty config file"), ("a: [1, 2", "invalid YAML"), ("- 1\n- 2", "expected a mapping")],
)
def test_unreadable_files_are_config_errors(write_yaml, text, expected):
    with pytest.raises(ConfigError, match=expected):
        config.load(write_yaml(text))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(write_yaml):
    # A python-object tag would run code under yaml.load; safe_load refuses it.
    with pytest.raises(ConfigError, match="invalid YAML"):
        config.load(write_yaml("model: !!python/object/apply:os.system ['true']"))
