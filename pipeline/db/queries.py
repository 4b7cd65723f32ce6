"""Read-side queries for the CLI and the Python API, returning plain entities.

Example:
    >>> engine = make_engine("sqlite:///fitstream.db", read_only=True)   # doctest: +SKIP
    >>> [r.status for r in list_runs(engine, limit=5)]                   # doctest: +SKIP
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.entities import EpochRecord, Run, RunDetail
from pipeline.db.models import SqlRun
from pipeline.db.readonly import QueryResult, run_query
from pipeline.db.session import transaction
from pipeline.errors import ConfigurationError, RunNotFoundError

RUN_FIELDS = (
    "run_id",
    "name",
    "status",
    "started_at",
    "finished_at",
    "epochs_completed",
    "best_epoch",
    "stopped_epoch",
    "monitor",
    "best_value",
    "mode",
    "model_name",
    "params_count",
    "wall_time_s",
    "error_type",
    "error_message",
    "data_fingerprint",
    "status_reason",
    "sweep_id",
)
_RUNS = SqlRun.__table__
_RUN_SELECT = sa.select(*(_RUNS.c[f] for f in RUN_FIELDS))


def _run(row: Any) -> Run:
    return Run(**dict(row._mapping))


def list_runs(
    engine: Engine, *, status: str | None = None, name: str | None = None, limit: int = 50
) -> list[Run]:
    """Most recent runs first."""
    query = _RUN_SELECT
    if status:
        query = query.where(_RUNS.c.status == status)
    if name:
        query = query.where(_RUNS.c.name == name)
    query = query.order_by(_RUNS.c.started_at.desc(), _RUNS.c.run_id).limit(limit)
    with transaction(engine) as conn:
        return [_run(row) for row in conn.execute(query)]


def monitored_curves(engine: Engine, runs: list[Run]) -> dict[str, list[float | None]]:
    """Each run's monitored metric, epoch by epoch (for sparklines); runs without a monitor are left out."""
    wanted = {r.run_id: r.monitor for r in runs if r.monitor}
    curves: dict[str, list[float | None]] = {run_id: [] for run_id in wanted}
    if not wanted:
        return curves
    query = sa.text(
        "SELECT run_id, name, value FROM epoch_metrics WHERE run_id IN :ids ORDER BY run_id, epoch"
    ).bindparams(sa.bindparam("ids", expanding=True))
    with transaction(engine) as conn:
        for run_id, name, value in conn.execute(query, {"ids": list(wanted)}):
            if wanted[run_id] == name:
                curves[run_id].append(value)
    return curves


def resolve_run_id(engine: Engine, run_ref: str) -> str:
    """The full id of the run whose id is, or starts with, ``run_ref``."""
    if not run_ref:
        raise ConfigurationError("a run id (or the start of one) is required")
    with transaction(engine) as conn:
        rows = (
            conn.execute(
                # A prefix is matched literally: '\\' escapes LIKE's wildcards on both databases.
                sa.text(
                    "SELECT run_id FROM runs WHERE run_id = :ref OR run_id LIKE :prefix ESCAPE '\\' ORDER BY run_id LIMIT 6"
                ),
                {
                    "ref": run_ref,
                    "prefix": run_ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",
                },
            )
            .scalars()
            .all()
        )
    if run_ref in rows:
        return run_ref
    if not rows:
        raise RunNotFoundError(f"no run with id {run_ref!r}; list runs with: fitstream runs")
    if len(rows) > 1:
        raise RunNotFoundError(
            f"{run_ref!r} matches several runs ({', '.join(rows[:5])}…); give more characters"
        )
    return rows[0]


def run_checkpoints(conn: Any, run_id: str) -> list[dict[str, Any]]:
    """A run's checkpoints (epoch, path, monitor, value, size_bytes, sha256, saved_at), by epoch."""
    return [
        dict(row._mapping)
        for row in conn.execute(
            sa.text(
                "SELECT epoch, path, monitor, value, size_bytes, sha256, saved_at FROM checkpoints "
                "WHERE run_id = :id ORDER BY epoch, path"
            ),
            {"id": run_id},
        )
    ]


def get_run_summary(engine: Engine, run_ref: str) -> Run:
    """One run's row (no epochs): what a page header shows."""
    run_id = resolve_run_id(engine, run_ref)
    with transaction(engine) as conn:
        return _run(conn.execute(_RUN_SELECT.where(_RUNS.c.run_id == run_id)).one())


def get_run(engine: Engine, run_ref: str) -> RunDetail:
    """A run with its epochs (metrics in Keras' order of names) and checkpoints."""
    run_id = resolve_run_id(engine, run_ref)
    with transaction(engine) as conn:
        run = _run(conn.execute(_RUN_SELECT.where(_RUNS.c.run_id == run_id)).one())
        metrics: OrderedDict[int, dict[str, float | None]] = OrderedDict()
        for epoch, name, value in conn.execute(
            sa.text("SELECT epoch, name, value FROM epoch_metrics WHERE run_id = :id ORDER BY epoch, name"),
            {"id": run_id},
        ):
            metrics.setdefault(epoch, {})[name] = value
        extra = {
            row.epoch: row
            for row in conn.execute(
                sa.text(
                    "SELECT epoch, learning_rate, wall_time_s, samples_per_second FROM epochs WHERE run_id = :id"
                ),
                {"id": run_id},
            )
        }
        checkpoints = run_checkpoints(conn, run_id)
    epochs = []
    for epoch in sorted(set(metrics) | set(extra)):
        row = extra.get(epoch)
        epochs.append(
            EpochRecord(
                epoch=epoch,
                metrics=metrics.get(epoch, {}),
                learning_rate=row.learning_rate if row is not None else None,
                wall_time_s=row.wall_time_s if row is not None else None,
                samples_per_second=row.samples_per_second if row is not None else None,
            )
        )
    return RunDetail(run=run, epochs=epochs, checkpoints=checkpoints)


def run_sql(
    database_url: str, query: str, *, max_rows: int | None = None, settings: Any = None
) -> QueryResult:
    """Run a user's ``query`` through the one read-only path (:func:`pipeline.db.readonly.run_query`).

    Example:
        >>> run_sql("sqlite:///:memory:", "SELECT 2 AS two").rows
        [(2,)]
    """
    from pipeline.config import get_settings

    settings = settings or get_settings()
    return run_query(
        database_url,
        query,
        max_rows=max_rows or settings.sql_max_rows,
        timeout_s=settings.sql_timeout_seconds,
        reader_database_url=settings.reader_database_url,
    )
