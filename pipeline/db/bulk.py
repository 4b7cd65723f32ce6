"""Fast idempotent bulk inserts: ``INSERT … ON CONFLICT DO NOTHING`` for many rows at once.

SQLite gets one ``executemany`` of ``INSERT OR IGNORE``. PostgreSQL gets ``COPY`` straight into
the keyed table, each row written once, inside a savepoint: COPY cannot skip a conflict, so when a
row is already there (a replayed or reclaimed event) the savepoint is rolled back and the rows go
the slower way, ``COPY`` into a per-connection temporary staging table, then one
``INSERT … SELECT … ON CONFLICT DO NOTHING``. Replays are rare; the common path writes each row once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

#: Below this many rows, PostgreSQL uses a plain multi-row INSERT instead of COPY.
COPY_THRESHOLD = 200


def sqlite_timestamp(value: datetime | None) -> str | None:
    """The text SQLAlchemy's SQLite DateTime type stores (UTC, no offset)."""
    if value is None:
        return None
    if value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    return value.isoformat(sep=" ", timespec="microseconds")[:26]  # drop the "+00:00"


def insert_ignore(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table``, skipping key conflicts."""
    if not rows:
        return
    dialect = conn.dialect.name
    cols = ", ".join(columns)
    if dialect == "sqlite":
        marks = ", ".join("?" for _ in columns)
        stamped = [i for i, v in enumerate(rows[0]) if isinstance(v, datetime)]
        if stamped:
            converted: list[Any] = []
            for row in rows:
                values = list(row)
                for i in stamped:
                    values[i] = sqlite_timestamp(values[i])
                converted.append(tuple(values))
            rows = converted
        # The DBAPI cursor directly: SQLAlchemy's parameter handling costs ~15 % at this volume.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})", rows)
        finally:
            cursor.close()
        return
    if dialect != "postgresql":
        raise NotImplementedError(f"bulk insert is not implemented for {dialect}")
    import psycopg  # the PostgreSQL driver: installed with the `postgres` extra

    raw = conn.connection.driver_connection
    with raw.cursor() as cursor:
        if len(rows) < COPY_THRESHOLD:
            marks = ", ".join("%s" for _ in columns)
            cursor.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows)
            return
        cursor.execute("SAVEPOINT fitstream_copy")
        try:
            _copy(cursor, table, cols, rows)
        except psycopg.errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT fitstream_copy")
        else:
            cursor.execute("RELEASE SAVEPOINT fitstream_copy")
            return
        stage = f"_fitstream_stage_{table}"
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        _copy(cursor, stage, cols, rows)
        cursor.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING")
        cursor.execute(f"TRUNCATE {stage}")


def _copy(cursor: Any, table: str, cols: str, rows: Sequence[Sequence[Any]]) -> None:
    with cursor.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def upsert_insert(conn: Connection, table: sa.Table):  # type: ignore[no-untyped-def]
    """``INSERT`` with the dialect's ``ON CONFLICT`` support (SQLite and PostgreSQL)."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def greatest(conn: Connection, *columns: Any) -> Any:
    """The larger of ``columns``: GREATEST on PostgreSQL, multi-argument MAX on SQLite."""
    return (sa.func.greatest if conn.dialect.name == "postgresql" else sa.func.max)(*columns)
