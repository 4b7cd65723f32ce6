"""The one place that owns database engines and transactions.

Example:
    >>> engine = make_engine("sqlite:///:memory:")
    >>> with transaction(engine) as conn:
    ...     conn.exec_driver_sql("SELECT 1").scalar()
    1
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from pipeline.errors import ConfigurationError, DatabaseError, ReadOnlyViolationError

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: SQLite page cache per connection (KiB): keeps the metrics index in memory as the file grows.
SQLITE_CACHE_KIB = 65_536


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def mask_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database url>"


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for ``url``. With ``read_only`` the database itself refuses writes: connections
    come from the one read-only path (:mod:`pipeline.db.readonly`) — on PostgreSQL as the
    ``fitstream_reader`` role in read-only transactions, on SQLite a ``mode=ro`` file with an
    authorizer that allows reading only. No SQL text is parsed to decide.
    """
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigurationError(f"FITSTREAM_DATABASE_URL is not a valid database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigurationError(f"unsupported database {backend!r}: use a sqlite:/// or postgresql:// URL")
    if read_only:
        from pipeline.config import get_settings
        from pipeline.db.readonly import engine_creator

        settings = get_settings()
        creator = engine_creator(url, reader_database_url=settings.reader_database_url, timeout_s=settings.sql_timeout_seconds)
        return sa.create_engine(url, creator=creator, pool_pre_ping=backend == "postgresql")
    if backend == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            if parsed.database not in (None, "", ":memory:"):
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _is_read_only_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "read-only" in text or "readonly" in text or "read only" in text


def _is_transient(exc: sa.exc.DBAPIError) -> bool:
    if exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError):
        return "locked" in str(exc).lower() or exc.connection_invalidated or "connection" in str(exc).lower()
    return False


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction: committed on success, rolled back on error.

    Database errors are raised as :class:`DatabaseError` (``transient`` tells
    whether retrying may help) or :class:`ReadOnlyViolationError`.
    """
    try:
        with engine.begin() as conn:
            yield conn
    except sa.exc.DBAPIError as exc:
        original = exc.orig if exc.orig is not None else exc
        if _is_read_only_error(original):
            raise ReadOnlyViolationError(f"refused: this session is read-only ({original})") from None
        raise DatabaseError(f"database error on {mask_url(str(engine.url))}: {original}", transient=_is_transient(exc)) from exc
