"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args...` as a user would, capturing its output."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def write_yaml(tmp_path):
    """Write a YAML text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "conf.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
