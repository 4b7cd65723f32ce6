"""The one place that owns database engines and transactions.

Example:
    >>> engine = make_engine("sqlite:///:memory:")
    >>> with transaction(engine) as conn:
    ...     conn.exec_driver_sql("SELECT 1").scalar()
    1
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from pipeline.errors import ConfigurationError, DatabaseError

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
        creator = engine_creator(
            url, reader_database_url=settings.reader_database_url, timeout_s=settings.sql_timeout_seconds
        )
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


#: PostgreSQL SQLSTATEs (and classes) an event causes on its own: a value the column cannot hold,
#: a constraint it breaks. Everything else is the database being unwell: pause and retry.
_EVENT_CAUSED_SQLSTATE_CLASSES = ("22", "23")
#: SQLite result codes an event causes on its own (too big, wrong type, a constraint).
_EVENT_CAUSED_SQLITE = ("SQLITE_TOOBIG", "SQLITE_MISMATCH", "SQLITE_CONSTRAINT", "SQLITE_RANGE")


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None) or getattr(getattr(exc, "diag", None), "sqlstate", None)


def caused_by_the_data(exc: BaseException) -> bool:
    """Whether a database error is one the written data causes by itself (so retrying the same
    rows cannot help), decided by SQLSTATE class or SQLite result code, never by message words.

    Connection loss, shutdowns, too many connections, a full disk, out of memory, permissions,
    serialization failures, deadlocks, lock timeouts, a read-only standby after failover — and any
    error not known to come from the data — are the database's state: the caller pauses and retries.

    Example:
        >>> import sqlite3
        >>> error = sqlite3.IntegrityError("UNIQUE constraint failed"); error.sqlite_errorname = "SQLITE_CONSTRAINT_UNIQUE"
        >>> caused_by_the_data(error)
        True
    """
    state = _sqlstate(exc)
    if state:
        return state[:2] in _EVENT_CAUSED_SQLSTATE_CLASSES
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        return name.startswith(_EVENT_CAUSED_SQLITE)
    return _refused_by_the_driver(exc)


def _refused_by_the_driver(exc: BaseException) -> bool:
    """psycopg refuses some values before sending them (a NUL in a text field): a ``DataError``
    with no SQLSTATE, raised on the client. Retrying the same rows cannot help."""
    original = getattr(exc, "orig", None) or exc
    return any(
        f"{cls.__module__}.{cls.__qualname__}" == "psycopg.DataError" for cls in type(original).__mro__
    )


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction: committed on success, rolled back on error.

    Database errors are raised as :class:`DatabaseError`: ``transient`` unless the written data
    caused it (:func:`caused_by_the_data`), with the SQLSTATE or SQLite code as ``code``.
    """
    try:
        with engine.begin() as conn:
            yield conn
    except sa.exc.DBAPIError as exc:
        raise _database_error(engine, exc.orig if exc.orig is not None else exc) from exc
    except Exception as exc:
        if not _is_driver_error(exc):  # the bulk path (COPY) talks to the driver directly
            raise
        raise _database_error(engine, exc) from exc


def _is_driver_error(exc: BaseException) -> bool:
    import sqlite3

    return isinstance(exc, sqlite3.Error) or type(exc).__module__.split(".")[0] == "psycopg"


def _database_error(engine: Engine, original: BaseException) -> DatabaseError:
    code = _sqlstate(original) or getattr(original, "sqlite_errorname", None)
    return DatabaseError(
        f"database error on {mask_url(str(engine.url))}: {original}",
        transient=not caused_by_the_data(original),
        code=code,
    )
