"""The one read-only path to the history database, enforced by the database itself.

Every read a user reaches — ``fitstream sql``, ``runs``, ``show``, ``models``, the Python API —
connects here:

- **PostgreSQL**: as the ``fitstream_reader`` role (created by the migrations, or by
  ``fitstream db grant-reader``), which may only SELECT Fitstream's tables — never as the
  database's owner, whose session could switch back to itself from inside a query
  (``set_config('role', …)``). Each query runs in a ``READ ONLY`` transaction under a
  ``statement_timeout``, as exactly one statement (a server-side cursor: extended protocol, and
  only a SELECT, VALUES or TABLE query parses), with at most ``max_rows`` rows fetched.
- **SQLite**: the file is opened read-only (``mode=ro``) with ``query_only`` on and an authorizer
  that allows reading and read-only functions only — no ATTACH, no PRAGMA that writes, no VACUUM,
  no extension loading — and a progress handler that cancels a query past its timeout.

Example:
    >>> result = run_query("sqlite:///:memory:", "SELECT 1 AS one, 'a%' AS pattern")
    >>> result.columns, result.rows, result.truncated
    (['one', 'pattern'], [(1, 'a%')], False)
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from pipeline.errors import ConfigurationError, DatabaseError, QueryTimeoutError, ReadOnlyViolationError

READER_ROLE = "fitstream_reader"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_ROWS = 10_000

# -- SQLite -----------------------------------------------------------------------------------
_ALLOWED_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
#: Pragmas whose value may be read (never set): what SQLAlchemy asks on connect, and a few more.
#: (The schema itself is readable as ``SELECT sql FROM sqlite_master``.)
_VALUE_PRAGMAS = {
    "read_uncommitted",
    "query_only",
    "user_version",
    "schema_version",
    "data_version",
    "encoding",
    "page_size",
    "page_count",
    "database_list",
}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}
#: Progress-handler granularity (SQLite VM instructions between two looks at the clock).
_PROGRESS_STEPS = 10_000


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _source: str | None) -> int:
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        pragma = (arg1 or "").lower()
        if pragma in _VALUE_PRAGMAS and arg2 is None:
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _sqlite_path(url: str) -> str | None:
    database = make_url(url).database
    return None if database in (None, "", ":memory:") else database


def connect_sqlite(url: str, *, busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """A read-only SQLite connection: ``mode=ro``, ``query_only``, and the reading-only authorizer."""
    path = _sqlite_path(url)
    if path is None:
        conn = sqlite3.connect(":memory:", timeout=busy_timeout_s, check_same_thread=False)
    else:
        try:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=busy_timeout_s, check_same_thread=False
            )
        except sqlite3.OperationalError as exc:
            raise DatabaseError(f"cannot open the history database {path} for reading: {exc}") from None
    conn.execute("PRAGMA query_only=ON")
    conn.set_authorizer(_authorize)
    return conn


def _sqlite_query(url: str, query: str, *, max_rows: int, timeout_s: float) -> QueryResult:
    conn = connect_sqlite(url)
    deadline = time.monotonic() + timeout_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_STEPS)
    try:
        cursor = conn.execute(query)  # sqlite3 refuses more than one statement
        columns = [d[0] for d in cursor.description or ()]
        rows = cursor.fetchmany(max_rows + 1) if cursor.description else []
    except sqlite3.DatabaseError as exc:
        message = str(exc)
        if message == "interrupted":
            raise QueryTimeoutError(
                f"the query ran longer than {timeout_s:g}s and was cancelled (FITSTREAM_SQL_TIMEOUT_SECONDS)"
            ) from None
        if "authoriz" in message or "readonly" in message or "read-only" in message:
            raise ReadOnlyViolationError(f"refused: fitstream sql is read-only ({message})") from None
        if "one statement at a time" in message:
            raise DatabaseError(f"{message} (fitstream sql runs exactly one statement)") from None
        raise DatabaseError(message) from None
    except sqlite3.Warning as exc:  # older Pythons: "You can only execute one statement at a time."
        raise DatabaseError(f"{exc} (fitstream sql runs exactly one statement)") from None
    finally:
        conn.close()
    return QueryResult(columns, [tuple(r) for r in rows[:max_rows]], truncated=len(rows) > max_rows)


# -- PostgreSQL -----------------------------------------------------------------------------
def reader_url(database_url: str, explicit: str | None = None) -> str:
    """The libpq URL read-only paths connect with: ``explicit`` (FITSTREAM_READER_DATABASE_URL), else
    the history database's URL as ``fitstream_reader`` without a password."""
    url = make_url(explicit or database_url)
    if not explicit:  # URL.create, not URL.set: set() ignores None and would keep the owner's password
        url = URL.create(
            "postgresql",
            username=READER_ROLE,
            host=url.host,
            port=url.port,
            database=url.database,
            query=url.query,
        )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _reader_options(timeout_s: float) -> str:
    return f"-c default_transaction_read_only=on -c statement_timeout={int(timeout_s * 1000)}"


def connect_postgres(
    database_url: str, *, explicit_reader_url: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Any:
    """A psycopg connection as the reader role, every transaction read-only and time-limited."""
    import psycopg

    url = reader_url(database_url, explicit_reader_url)
    try:
        conn = psycopg.connect(url, options=_reader_options(timeout_s), connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise ConfigurationError(
            f"cannot connect to PostgreSQL as the read-only role ({_first_line(exc)}); create it with "
            f"`fitstream db grant-reader` (as a user who may create roles), or set FITSTREAM_READER_DATABASE_URL "
            f"to a login that may only SELECT"
        ) from None
    conn.read_only = True
    return conn


_CURSOR_PREFIX = 'DECLARE "fitstream_sql" CURSOR FOR '
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)


def _first_word(query: str) -> str:
    rest = query[_LEADING.match(query).end() :]  # type: ignore[union-attr]
    return rest.split(None, 1)[0] if rest.split() else ""


def _fails_at_first_word(exc: Any, query: str) -> bool:
    """Whether the server's syntax error points at the query's first word: it is no SELECT."""
    try:
        position = int(exc.diag.statement_position or 0)
    except (TypeError, ValueError):
        return False
    return position == len(_CURSOR_PREFIX) + _LEADING.match(query).end() + 1  # type: ignore[union-attr]


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _postgres_query(
    database_url: str, query: str, *, max_rows: int, timeout_s: float, explicit_reader_url: str | None
) -> QueryResult:
    import psycopg
    from psycopg import errors

    conn = connect_postgres(database_url, explicit_reader_url=explicit_reader_url, timeout_s=timeout_s)
    try:
        # A server-side cursor: DECLARE … CURSOR FOR <query> runs over the extended protocol (one
        # statement) and parses only a SELECT, VALUES or TABLE query.
        with conn.cursor(name="fitstream_sql") as cursor:
            cursor.execute(query)
            rows = cursor.fetchmany(max_rows + 1)
            columns = [d.name for d in cursor.description or ()]
    except errors.QueryCanceled:
        raise QueryTimeoutError(
            f"the query ran longer than {timeout_s:g}s and was cancelled (FITSTREAM_SQL_TIMEOUT_SECONDS)"
        ) from None
    except (errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction) as exc:
        raise ReadOnlyViolationError(f"refused: fitstream sql is read-only ({_first_line(exc)})") from None
    except errors.SyntaxError as exc:
        if _fails_at_first_word(exc, query):
            raise ReadOnlyViolationError(
                f"refused: fitstream sql is read-only: it runs exactly one SELECT, WITH … SELECT, VALUES or TABLE "
                f"query; got {_first_word(query)!r}"
            ) from None
        raise DatabaseError(
            f"{_first_line(exc)} (fitstream sql runs exactly one SELECT, WITH … SELECT, VALUES or TABLE query)"
        ) from None
    except errors.FeatureNotSupported as exc:  # e.g. WITH x AS (DELETE …) SELECT
        raise ReadOnlyViolationError(f"refused: fitstream sql is read-only ({_first_line(exc)})") from None
    except psycopg.Error as exc:
        raise DatabaseError(_first_line(exc)) from None
    finally:
        conn.rollback()
        conn.close()
    return QueryResult(columns, [tuple(r) for r in rows[:max_rows]], truncated=len(rows) > max_rows)


def grant_reader_statements() -> list[str]:
    """SQL that creates the ``fitstream_reader`` login (no password: set one for password auth) and
    lets it SELECT the current schema's tables, now and later. Idempotent; a user who may not create
    roles gets a WARNING from the server, not an error (then run ``fitstream db grant-reader`` as one).
    No ``%`` in it: the same text runs through Alembic and through the driver, which reads ``%`` as a
    placeholder."""
    return [
        f"""DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{READER_ROLE}') THEN
    CREATE ROLE {READER_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
  END IF;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE WARNING 'fitstream: this user may not create the role {READER_ROLE}; run fitstream db grant-reader as one who may';
END $$""",
        f"""DO $$ BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{READER_ROLE}') THEN
    EXECUTE 'GRANT CONNECT ON DATABASE ' || quote_ident(current_database()) || ' TO {READER_ROLE}';
    EXECUTE 'GRANT USAGE ON SCHEMA ' || quote_ident(current_schema()) || ' TO {READER_ROLE}';
    EXECUTE 'GRANT SELECT ON ALL TABLES IN SCHEMA ' || quote_ident(current_schema()) || ' TO {READER_ROLE}';
    EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA ' || quote_ident(current_schema()) || ' GRANT SELECT ON TABLES TO {READER_ROLE}';
  END IF;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE WARNING 'fitstream: this user may not grant SELECT to {READER_ROLE}; run fitstream db grant-reader as one who may';
END $$""",
    ]


# -- the one function ---------------------------------------------------------------------------
@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool = False  # more rows existed than were returned


def run_query(
    database_url: str,
    query: str,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    reader_database_url: str | None = None,
) -> QueryResult:
    """Run one read-only ``query`` against the history database (see the module docstring).

    Raises:
        ReadOnlyViolationError: the query tried to write or to reach beyond the history tables.
        QueryTimeoutError: it ran longer than ``timeout_s``.
        DatabaseError: it is not valid SQL (the message says why), or the database failed.
    """
    backend = make_url(database_url).get_backend_name()
    if backend == "sqlite":
        return _sqlite_query(database_url, query, max_rows=max_rows, timeout_s=timeout_s)
    if backend == "postgresql":
        return _postgres_query(
            database_url,
            query,
            max_rows=max_rows,
            timeout_s=timeout_s,
            explicit_reader_url=reader_database_url,
        )
    raise ConfigurationError(f"unsupported database {backend!r}: use a sqlite:/// or postgresql:// URL")


def engine_creator(
    database_url: str, *, reader_database_url: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Callable[[], Any]:
    """DBAPI connections for a read-only SQLAlchemy engine (the CLI's own read queries)."""
    if make_url(database_url).get_backend_name() == "sqlite":
        return lambda: connect_sqlite(database_url)

    def connect() -> Any:
        conn = connect_postgres(database_url, explicit_reader_url=reader_database_url, timeout_s=timeout_s)
        conn.read_only = False  # SQLAlchemy manages transactions; the session default keeps them read-only
        return conn

    return connect


def grant_reader(engine: Engine) -> bool:
    """Run :func:`grant_reader_statements` on PostgreSQL; True when the reader role exists after."""
    with engine.begin() as conn:
        for statement in grant_reader_statements():
            conn.exec_driver_sql(statement)
        exists = conn.execute(
            sa.text("SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = :r"), {"r": READER_ROLE}
        ).scalar()
    return bool(exists)
