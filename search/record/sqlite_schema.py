"""A new SQLite tracking database, made by copying an empty one instead of migrating.

MLflow creates a new SQLite store by running every schema migration since its first
release: about 1.3 s of CPU more than opening an existing store (2.1 s against 0.86 s,
measured on 2 cores with MLflow 3.17), paid by every search that starts a new
`mlflow.db` (a first `make demo`, every test in its own folder). Here MLflow builds its
schema once per MLflow version into an empty database kept in the user's cache folder,
and a new store is a copy of that file. MLflow checks the copy's schema revision when it
opens it (`_verify_schema`), and creates its `Default` experiment there as in any new
store: the template holds the tables and the schema revision, no experiment.

    python -m search.record.sqlite_schema     # build the template now (`make install`)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def template_path() -> Path:
    """Where this MLflow version's empty database lives ($XDG_CACHE_HOME or ~/.cache)."""
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "adamsearch" / f"mlflow-{mlflow.__version__}-empty.db"


def build_template() -> Path:
    """This MLflow version's schema, migrated once into an empty database (atomically: two
    searches building it at once each write their own file, and one of them wins)."""
    import sqlalchemy
    from mlflow.store.db import utils  # private: tests/test_private_parts.py names it

    path = template_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".db")
    os.close(fd)
    try:
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
        utils._initialize_tables(engine)
        engine.dispose()
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def prepare(tracking_uri: str) -> None:
    """If `tracking_uri` names a SQLite file that does not exist yet, create it as a copy of
    the template. Anything else (a server, an existing file) is left to MLflow, and so is
    this one if the copy cannot be made: MLflow then migrates as usual."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    if db.exists():
        return
    with contextlib.suppress(Exception):  # an optimisation only: never a reason to fail
        template = build_template()
        db.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=db.parent, prefix=f".{db.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(template, tmp)
            os.link(tmp, db)  # never over a database another process made meanwhile
        finally:
            os.unlink(tmp)


if __name__ == "__main__":
    print(build_template())
