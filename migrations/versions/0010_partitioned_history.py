"""Partitioned history on PostgreSQL: ``epoch_metrics``, ``batch_metrics`` and ``events`` become
partitioned parents, hash-partitioned into 16 partitions each. SQLite is left as it is.

* ``epoch_metrics`` and ``batch_metrics`` by hash of ``run_id``: one run's curve is read from one
  partition (its own smaller index), every row of a run lives in one partition, and each partition is
  vacuumed and indexed on its own, so no single table or index grows with the whole history.
* ``events`` by hash of ``event_id`` (its key): the lifecycle events, looked up by ``run_id`` through
  the ``(run_id, seq)`` index every partition carries.

Names, columns, keys and indexes do not change: every documented query, the recorder's ``COPY`` and
its ``ON CONFLICT`` merge (the keys hold the partition column) work on the parents. The partitions
are ``<table>_p00`` … ``<table>_p15``; all of them are created here, nothing is created later. Rows
are copied across inside the migration's transaction (a long lock on a big history: run it in a
maintenance window, after ``fitstream status`` shows the recorders caught up).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PARTITIONS = 16

#: table -> (partition column, key columns, {index name: columns}), as 0001 and 0009 made them.
TABLES: dict[str, tuple[str, tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "epoch_metrics": ("run_id", ("name", "run_id", "epoch"), {}),
    "batch_metrics": ("run_id", ("run_id", "name", "step"), {}),
    "events": (
        "event_id",
        ("event_id",),
        {"ix_events_run_id_seq": ("run_id", "seq"), "ix_events_type": ("type",)},
    ),
}


def _is_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _key_name(table: str) -> str:
    """The name of ``table``'s primary-key constraint, whatever an earlier migration called it."""
    name = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) AND contype = 'p'"
            ),
            {"t": table},
        )
        .scalar()
    )
    return name or f"{table}_pkey"


def _rebuild(table: str, partition_by: str | None) -> None:
    """Recreate ``table`` (partitioned by ``partition_by``, or plain when None) and move its rows."""
    column, key, indexes = TABLES[table]
    key_name = _key_name(table)
    old = f"{table}_before_0010"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT {key_name} TO {old}_pkey")
    for index in indexes:
        op.execute(f"ALTER INDEX {index} RENAME TO {index}_before_0010")
    clause = f" PARTITION BY {partition_by}" if partition_by else ""
    op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS){clause}")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {key_name} PRIMARY KEY ({', '.join(key)})")
    if partition_by:
        for remainder in range(PARTITIONS):
            op.execute(
                f"CREATE TABLE {table}_p{remainder:02d} PARTITION OF {table} "
                f"FOR VALUES WITH (MODULUS {PARTITIONS}, REMAINDER {remainder})"
            )
    for index, columns in indexes.items():
        op.execute(f"CREATE INDEX {index} ON {table} ({', '.join(columns)})")
    op.execute(f"INSERT INTO {table} SELECT * FROM {old}")
    op.execute(f"DROP TABLE {old}")
    op.execute(f"ANALYZE {table}")


def upgrade() -> None:
    if not _is_postgresql():
        return
    for table, (column, _key, _indexes) in TABLES.items():
        _rebuild(table, f"HASH ({column})")


def downgrade() -> None:
    if not _is_postgresql():
        return
    for table in TABLES:
        _rebuild(table, None)  # dropping the partitioned parent's copy drops its partitions
