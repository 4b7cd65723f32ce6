"""Where SQL is written: the query layer (`pipeline/db/`) and the consumers' own write paths —
never the CLI, the dashboard, the workers or the notifiers. A module elsewhere may name
SQLAlchemy's `Engine`/`Connection` types (to pass them on), nothing more."""

from __future__ import annotations

import ast

from tests.conftest import REPO

#: The write paths of the consumers: each writes its effect in its own transaction.
WRITE_PATHS = {
    "pipeline/consumers/recorder.py",
    "pipeline/consumers/recorder_runs.py",
    "pipeline/consumers/recorder_sweeps.py",
    "pipeline/promotion/service.py",
    "pipeline/promotion/registration.py",
    "pipeline/promotion/versions.py",
    "alerts/alerter.py",
    "alerts/outbox.py",
}
TYPES_ONLY = {"sqlalchemy.engine"}


def _sqlalchemy_imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "sqlalchemy"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sqlalchemy":
            found.add(node.module)
    return found


def test_sql_is_written_only_in_the_query_layer_and_the_consumers_write_paths():
    offenders = {}
    for top in ("pipeline", "workers", "alerts"):
        for path in (REPO / top).rglob("*.py"):
            name = path.relative_to(REPO).as_posix()
            if name.startswith("pipeline/db/") or name in WRITE_PATHS:
                continue
            if extra := _sqlalchemy_imports(path) - TYPES_ONLY:
                offenders[name] = sorted(extra)
    assert offenders == {}, f"move these queries into pipeline/db/: {offenders}"


def test_the_write_paths_listed_exist():
    assert all((REPO / name).is_file() for name in WRITE_PATHS)
