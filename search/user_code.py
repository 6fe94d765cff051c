"""The user's own code: where a plug-in model or data function is imported from, and what
is shipped to the workers.

A plug-in (a model, a data function, a training task) is named by an import path
`package.module:attribute`. The driver imports it from the config file's folder (so a
module beside the YAML needs no installing), from the folders in `code`, or from installed
packages. What is not installed (the user's folders, and `ray.py_modules`) reaches every
worker through Ray's runtime_env `py_modules`, and its folders are recorded in the config's
`code`, so `best.yaml` retrains with `python -m search.train` as it is.
"""

from __future__ import annotations

import importlib.util
import site
import sys
import sysconfig
from pathlib import Path

import models
from search.config import ConfigError, SearchConfig, TrialConfig


def plugins(cfg: TrialConfig) -> list[str]:
    """Top-level modules of the config's plug-in model, data function and task, if any."""
    names = (cfg.model.name, cfg.data.dataset, cfg.train.task or "")
    return list(dict.fromkeys(name.partition(":")[0].split(".")[0] for name in names
                              if models.is_import_path(name)))


def use_folders(folders: list[str | Path]) -> None:
    """Put `folders` first on sys.path (once each), so plug-ins in them import."""
    for folder in reversed([str(Path(f).resolve()) for f in folders]):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def _installed(path: Path) -> bool:
    """Whether `path` lies in an installed environment (present on every node, like torch)
    rather than in the user's own folders."""
    paths = sysconfig.get_paths()
    roots = {paths["purelib"], paths["platlib"], *site.getsitepackages()}
    return any(path.is_relative_to(root) for root in roots)


def _location(name: str, field: str) -> Path:
    """The folder of a package, or the file of a module, found by import name or path."""
    if Path(name).exists():
        return Path(name).resolve()
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        raise ConfigError(f"{field}: {name!r} is neither a folder nor an importable module")
    return (Path(spec.submodule_search_locations[0]) if spec.submodule_search_locations
            else Path(spec.origin)).resolve()


def _plugin_locations(cfg: TrialConfig) -> list[Path]:
    """Where the plug-ins' top-level modules are found; one that is not found is left to
    the preflight, which says why it does not import."""
    found = []
    for module in plugins(cfg):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin not in (None, "built-in", "frozen"):
            found.append(_location(module, "model.name or data.dataset"))
    return found


def folders(cfg: TrialConfig) -> list[str]:
    """The folders the config's plug-ins are imported from, unless installed."""
    found = [str(path.parent) for path in _plugin_locations(cfg) if not _installed(path)]
    return list(dict.fromkeys(found))


def to_ship(cfg: SearchConfig) -> list[str]:
    """Local paths for Ray's `py_modules`: `ray.py_modules` (folders, or importable
    package names) and the plug-ins' own packages or modules, unless installed."""
    paths: list[str] = []
    for item in cfg.ray.py_modules:
        paths.append(str(_location(item, "ray.py_modules")))
    paths += [str(path) for path in _plugin_locations(cfg) if not _installed(path)]
    return list(dict.fromkeys(paths))
