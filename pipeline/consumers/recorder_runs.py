"""How the ``runs`` row merges a run's events, whether they come in one batch or many.

The status only moves forward (``run_queued`` says queued, every other event running, ``run_finished``
its terminal status, and the first terminal status stays); ``queued_at`` and ``started_at`` keep the
first value; ``epochs_completed`` and ``last_event_at`` the largest; every other column the latest value
that is neither null nor NaN. The same rules are applied twice, and live here side by side: in memory,
among one batch's events (:class:`RunUpdate`), and in SQL, between a batch and the stored row
(:func:`upsert_runs`), so the result is the same in any order and under any batching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.db import bulk
from pipeline.db.models import SqlRun

# How each runs column merges an incoming value with the stored one.
STATUS_RANK = {"queued": 0, "running": 1}
FIRST_WINS = ("started_at", "queued_at")
MAXIMUM = ("epochs_completed", "last_event_at")
LATEST_NON_NULL = (
    "name",
    "finished_at",
    "epochs_planned",
    "best_epoch",
    "stopped_epoch",
    "monitor",
    "mode",
    "best_value",
    "restored_best_weights",
    "model_name",
    "params_count",
    "optimizer",
    "batch_size",
    "host",
    "tags",
    "wall_time_s",
    "error_type",
    "error_message",
    "queue",
    "data_fingerprint",
    "sweep_id",
    "status_reason",
)


@dataclass
class RunUpdate:
    """What one batch says about one run, merged in memory before one upsert.

    Example:
        >>> run = RunUpdate()
        >>> run.promote("completed"); run.promote("running")
        >>> run.set(name="mnist", best_value=float("nan"))
        >>> run.set_first("started_at", 1); run.set_first("started_at", 2)
        >>> run.status, run.values
        ('completed', {'name': 'mnist', 'started_at': 1})
    """

    values: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    _status_rank: int = -1
    last_ts: float = 0.0
    epochs: int = 0

    def promote(self, status: str) -> None:
        """Statuses only move forward: queued < running < any terminal status."""
        rank = STATUS_RANK.get(status, 2)
        if rank > self._status_rank:
            self.status, self._status_rank = status, rank

    def set(self, **values: Any) -> None:
        """The latest value of each column that is neither None nor NaN."""
        for key, value in values.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.values[key] = value

    def set_first(self, key: str, value: Any) -> None:
        """A column whose first value stays (as ``coalesce(stored, new)`` keeps it across batches)."""
        self.values.setdefault(key, value)

    def bump(self, key: str, value: Any) -> None:
        current = self.values.get(key)
        if current is None or value > current:
            self.values[key] = value


def upsert_runs(conn: Connection, runs: dict[str, RunUpdate]) -> None:
    """Merge a batch's run updates into the ``runs`` rows, by the rules above, in one statement."""
    if not runs:
        return
    table = SqlRun.__table__
    insert = bulk.upsert_insert(conn, table)
    excluded, current = insert.excluded, table.c

    def rank(column: Any) -> Any:
        return sa.case((column == "queued", 0), (column == "running", 1), else_=2)

    merge: dict[str, Any] = {
        "status": sa.case(
            (rank(current.status) >= rank(excluded.status), current.status), else_=excluded.status
        ),
    }
    for name in FIRST_WINS:
        merge[name] = sa.func.coalesce(current[name], excluded[name])
    for name in MAXIMUM:
        merge[name] = sa.func.coalesce(
            bulk.greatest(conn, current[name], excluded[name]), excluded[name], current[name]
        )
    for name in LATEST_NON_NULL:
        merge[name] = sa.func.coalesce(excluded[name], current[name])
    statement = insert.on_conflict_do_update(index_elements=[current.run_id], set_=merge)
    columns = ("status", *FIRST_WINS, *MAXIMUM, *LATEST_NON_NULL)
    params = []
    for run_id, update in sorted(runs.items()):
        row = {name: update.values.get(name) for name in columns}
        row["run_id"] = run_id
        row["status"] = update.status if update._status_rank >= 0 else "running"
        row["epochs_completed"] = update.values.get("epochs_completed", 0)
        params.append(row)
    conn.execute(statement, params)
