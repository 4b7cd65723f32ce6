"""The recorder's writes of sweeps: a sweep's row from its trials' ``run_queued`` events, and its state.

A trial's ``run_queued`` event carries its sweep (:func:`sweep_row` collects one row per sweep in a
batch, :func:`upsert_sweeps` writes them, keeping the first spec and the earliest creation time).
Whenever a batch queues, starts or ends a trial, :func:`update_sweep_states` moves the state of its
sweep from the states of all its trials' ``runs`` rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline import events as ev
from pipeline.db import bulk
from pipeline.db.models import SqlSweep
from pipeline.sweeps import SWEEP_CANCELLED_REASON


def sweep_row(sweeps: dict[str, dict[str, Any]], sweep: ev.SweepTrial, at: datetime) -> None:
    """Add a trial's sweep to a batch's sweep rows (``sweeps``, by id): one row per sweep, with the
    earliest time a trial was queued and the spec of whichever trial carried one."""
    row = sweeps.setdefault(
        sweep.id,
        {
            "id": sweep.id,
            "name": sweep.name,
            "spec": None,
            "created_at": at,
            "trials": sweep.trials,
            "state": "queued",
        },
    )
    row["created_at"] = min(row["created_at"], at)
    if sweep.spec is not None:
        row["spec"] = json.dumps(sweep.spec)


def upsert_sweeps(conn: Connection, sweeps: dict[str, dict[str, Any]]) -> None:
    """Insert a batch's sweep rows; a sweep already stored keeps its spec and creation time."""
    if not sweeps:
        return
    table = SqlSweep.__table__
    insert = bulk.upsert_insert(conn, table)
    current, excluded = table.c, insert.excluded
    statement = insert.on_conflict_do_update(
        index_elements=[current.id],
        set_={
            "spec": sa.func.coalesce(current.spec, excluded.spec),
            "created_at": sa.func.coalesce(current.created_at, excluded.created_at),
        },
    )
    conn.execute(statement, [sweeps[k] for k in sorted(sweeps)])


#: A sweep's state from its trials' rows: cancelled once `fitstream cancel SWEEP` cancelled a trial
#: and every trial ended, finished once every trial ended, running once one left the queue.
_SWEEP_STATE = sa.text(f"""
UPDATE sweeps SET state = CASE
  WHEN (SELECT count(*) FROM runs WHERE runs.sweep_id = sweeps.id AND runs.status IN ({", ".join(f"'{s}'" for s in ev.TERMINAL_STATUSES)})) >= sweeps.trials
    THEN CASE WHEN EXISTS (SELECT 1 FROM runs WHERE runs.sweep_id = sweeps.id AND runs.status = 'cancelled'
                           AND runs.status_reason = :cancelled_reason) THEN 'cancelled' ELSE 'finished' END
  WHEN EXISTS (SELECT 1 FROM runs WHERE runs.sweep_id = sweeps.id AND runs.status <> 'queued') THEN 'running'
  ELSE 'queued' END
WHERE sweeps.id IN :sweep_ids
""").bindparams(sa.bindparam("sweep_ids", expanding=True))
_SWEEPS_OF = sa.text(
    "SELECT DISTINCT sweep_id FROM runs WHERE sweep_id IS NOT NULL AND run_id IN :run_ids"
).bindparams(sa.bindparam("run_ids", expanding=True))
_LOCK_SWEEPS = sa.text("SELECT id FROM sweeps WHERE id IN :sweep_ids ORDER BY id FOR UPDATE").bindparams(
    sa.bindparam("sweep_ids", expanding=True)
)


def update_sweep_states(conn: Connection, run_ids: Sequence[str]) -> None:
    """Move the state of the sweeps whose trials were queued, started or ended in this batch (most
    batches touch no sweep: one indexed look-up, nothing more)."""
    if not run_ids:
        return
    sweep_ids = sorted(conn.execute(_SWEEPS_OF, {"run_ids": list(run_ids)}).scalars())
    if not sweep_ids:
        return
    if conn.dialect.name == "postgresql":
        # Two recorders ending two trials of one sweep at once: the second waits here for the first
        # to commit, so that its UPDATE (a new snapshot, under READ COMMITTED) counts both trials.
        # SQLite needs nothing: one writer at a time.
        conn.execute(_LOCK_SWEEPS, {"sweep_ids": sweep_ids})
    conn.execute(_SWEEP_STATE, {"sweep_ids": sweep_ids, "cancelled_reason": SWEEP_CANCELLED_REASON})
