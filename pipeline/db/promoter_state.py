"""The promoter's own state in SQL: the runs it follows (``promoter_runs``: name, promotion settings,
spec hash, data fingerprint, monitors' modes, final status) and the checkpoints they saved
(``promoter_checkpoints``). Writes take the promoter's open connection (one batch, one transaction).

Example:
    >>> with transaction(engine) as conn:                                   # doctest: +SKIP
    ...     remember_run(conn, "run-1", "digits-mlp", settings='{"on_early_stop": true}')
    >>> promotion_settings(engine, "run-1")                                  # doctest: +SKIP
    '{"on_early_stop": true}'
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.db.bulk import upsert_insert
from pipeline.db.models import SqlPromoterCheckpoint, SqlPromoterRun
from pipeline.db.session import transaction

_RUNS = SqlPromoterRun.__table__
_CHECKPOINTS = SqlPromoterCheckpoint.__table__
#: What a later save of the same file in the same epoch (batch-level checkpoints) replaces.
_REPLACED = ("monitor", "value", "sha256", "mode", "source", "batch", "seq")


def remember_run(
    conn: Connection,
    run_id: str,
    name: str,
    settings: str | None,
    *,
    spec_hash: str | None = None,
    data_fingerprint: str | None = None,
    monitor_modes: str | None = None,
) -> None:
    """Record what ``run_queued`` / ``run_started`` say of a run; a value already known is kept
    unless the new one is given (the name: the first one wins)."""
    insert = upsert_insert(conn, _RUNS)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["run_id"],
            set_={
                "name": sa.func.coalesce(_RUNS.c.name, insert.excluded.name),
                "settings": sa.func.coalesce(insert.excluded.settings, _RUNS.c.settings),
                "spec_hash": sa.func.coalesce(insert.excluded.spec_hash, _RUNS.c.spec_hash),
                "data_fingerprint": sa.func.coalesce(
                    insert.excluded.data_fingerprint, _RUNS.c.data_fingerprint
                ),
                "monitor_modes": sa.func.coalesce(insert.excluded.monitor_modes, _RUNS.c.monitor_modes),
            },
        ),
        {
            "run_id": run_id,
            "name": name,
            "settings": settings,
            "spec_hash": spec_hash,
            "data_fingerprint": data_fingerprint,
            "monitor_modes": monitor_modes,
        },
    )


def set_run_status(conn: Connection, run_id: str, status: str) -> None:
    insert = upsert_insert(conn, _RUNS)
    conn.execute(
        insert.on_conflict_do_update(index_elements=["run_id"], set_={"status": insert.excluded.status}),
        {"run_id": run_id, "status": status},
    )


def remember_checkpoint(
    conn: Connection,
    *,
    run_id: str,
    epoch: int,
    path: str,
    monitor: str | None,
    value: float | None,
    sha256: str | None,
    mode: str | None,
    source: str | None,
    batch: int | None,
    seq: int,
) -> None:
    """Remember a checkpoint; a later save of the same file in the same epoch (a higher ``seq``)
    replaces it, an older redelivery does not."""
    insert = upsert_insert(conn, _CHECKPOINTS)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["run_id", "epoch", "path"],
            set_={c: insert.excluded[c] for c in _REPLACED},
            where=sa.or_(_CHECKPOINTS.c.seq.is_(None), _CHECKPOINTS.c.seq < insert.excluded.seq),
        ),
        {
            "run_id": run_id,
            "epoch": epoch,
            "path": path,
            "monitor": monitor,
            "value": value,
            "sha256": sha256,
            "mode": mode,
            "source": source,
            "batch": batch,
            "seq": seq,
        },
    )


def promotion_settings(engine: Engine, run_id: str) -> str | None:
    """The run's ``promote:`` settings as the promoter stored them (JSON text), if any."""
    with transaction(engine) as conn:
        return conn.execute(sa.select(_RUNS.c.settings).where(_RUNS.c.run_id == run_id)).scalar()
