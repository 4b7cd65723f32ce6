"""Fast idempotent bulk inserts: ``INSERT … ON CONFLICT DO NOTHING`` for many rows at once.

SQLite gets one ``executemany`` of ``INSERT OR IGNORE``. PostgreSQL gets
``COPY`` into a per-connection temporary staging table, then one
``INSERT … SELECT … ON CONFLICT DO NOTHING`` (COPY cannot skip conflicts itself).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy.engine import Connection

#: Below this many rows, PostgreSQL uses a plain multi-row INSERT instead of COPY.
COPY_THRESHOLD = 200


def sqlite_timestamp(value: datetime | None) -> str | None:
    """The text SQLAlchemy's SQLite DateTime type stores (UTC, no offset)."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def insert_ignore(conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table``, skipping key conflicts."""
    if not rows:
        return
    dialect = conn.dialect.name
    cols = ", ".join(columns)
    if dialect == "sqlite":
        marks = ", ".join("?" for _ in columns)
        rows = [tuple(sqlite_timestamp(v) if isinstance(v, datetime) else v for v in row) for row in rows]
        conn.exec_driver_sql(f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})", rows)
        return
    if dialect != "postgresql":
        raise NotImplementedError(f"bulk insert is not implemented for {dialect}")
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor:
        if len(rows) < COPY_THRESHOLD:
            marks = ", ".join("%s" for _ in columns)
            cursor.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows)
            return
        stage = f"_fitstream_stage_{table}"
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING")
        cursor.execute(f"TRUNCATE {stage}")
