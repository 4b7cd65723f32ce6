"""Issue 10: `fitstream sql` really is read-only — on PostgreSQL connected as its superuser owner,
and on SQLite — and runaway queries are bounded (time limit, row limit)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from pipeline.db.readonly import READER_ROLE, run_query
from pipeline.errors import QueryTimeoutError, ReadOnlyViolationError
from tests.conftest import run_cli, settings_env


def _sql(settings, query, *args, **env):
    return run_cli("sql", query, *args, env_extra={**settings_env(settings), **env}, check=False)


def _stderr(result):
    return " ".join(result.stderr.split())  # the console wraps long lines


def _refused(result):
    return (
        result.returncode == 1
        and result.stdout == ""
        and "refused: fitstream sql is read-only" in _stderr(result)
    )


@pytest.fixture
def history(settings, engine):
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO runs (run_id, name, status, epochs_completed) VALUES ('r1', :name, 'completed', 3)"
            ),
            {"name": "x-50%"},
        )
    return settings


def test_postgres_bypasses_found_in_review_are_refused(history, engine, database_url, tmp_path):
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's own bypasses; SQLite's are below")
    with engine.connect() as conn:  # the test connects as the cluster's superuser, as many installs do
        assert (
            conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar()
            is True
        )
    pwned = tmp_path / "pwned"
    for query in (
        "BEGIN READ WRITE; CREATE TABLE t(x int); COMMIT",
        f"COPY (SELECT 1) TO PROGRAM 'touch {pwned}'",
        "SELECT pg_read_file('/etc/hostname')",
        "SELECT pg_ls_dir('.')",
        "SELECT pg_reload_conf()",
        "SELECT set_config('role', 'postgres', false), pg_read_file('/etc/hostname')",
        "WITH gone AS (DELETE FROM runs RETURNING 1) SELECT count(*) FROM gone",
        "CREATE TABLE t2 (x int)",
        "SET ROLE postgres",
    ):
        assert _refused(_sql(history, query)), (query, _sql(history, query).stderr)
    assert not pwned.exists()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('t'), to_regclass('t2')")).one() == (None, None)
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 1
        privileges = conn.execute(
            sa.text("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = :r"),
            {"r": READER_ROLE},
        ).one()
    assert tuple(privileges) == (False, False, False)


def test_sqlite_bypasses_found_in_review_are_refused(history, database_url, tmp_path):
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's own bypasses; PostgreSQL's are above")
    attached, vacuumed = tmp_path / "attached.db", tmp_path / "vacuumed.db"
    for query in (
        f"ATTACH DATABASE '{attached}' AS x",
        "PRAGMA query_only=0",
        f"VACUUM INTO '{vacuumed}'",
        "SELECT load_extension('/tmp/nothing')",
        "INSERT INTO runs (run_id, status, epochs_completed) VALUES ('r2', 'running', 0)",
        "PRAGMA writable_schema=1",
    ):
        assert _refused(_sql(history, query)), (query, _sql(history, query).stderr)
    assert not attached.exists() and not vacuumed.exists()
    several = _sql(history, "SELECT 1; DELETE FROM runs")
    assert several.returncode == 1 and "exactly one statement" in _stderr(several)


def test_reading_works_and_percent_signs_are_plain_text(history):
    rows = json.loads(_sql(history, "SELECT run_id, name FROM runs WHERE name LIKE 'x-50%'", "--json").stdout)
    assert rows == [{"run_id": "r1", "name": "x-50%"}]


def test_a_runaway_query_is_cancelled_at_its_time_limit(history, database_url):
    slow = (
        "SELECT pg_sleep(30)"
        if database_url.startswith("postgresql")
        else ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")
    )
    result = _sql(history, slow, FITSTREAM_SQL_TIMEOUT_SECONDS="1")
    assert result.returncode == 1 and "ran longer than 1s and was cancelled" in _stderr(result)
    with pytest.raises(QueryTimeoutError):
        run_query(history.database_url, slow, timeout_s=0.5)


def test_row_limit_truncates_with_a_notice_and_json_stays_json(history):
    query = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) SELECT x FROM c"
    result = _sql(history, query, "--json", FITSTREAM_SQL_MAX_ROWS="10")
    assert result.returncode == 0 and [r["x"] for r in json.loads(result.stdout)] == list(range(1, 11))
    assert "truncated: only the first 10 rows" in _stderr(result)
    complete = run_query(history.database_url, query, max_rows=100)
    assert len(complete.rows) == 100 and not complete.truncated


def test_the_python_api_refuses_writes_too(history):
    with pytest.raises(ReadOnlyViolationError):
        run_query(history.database_url, "DELETE FROM runs")


def test_grant_reader_gives_the_reader_role_back_what_read_paths_need(settings, engine, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("roles and grants are PostgreSQL's; checked there")
    import json as _json

    from pipeline.db.readonly import READER_ROLE
    from tests.conftest import run_cli, settings_env

    env = settings_env(settings)
    with engine.begin() as conn:  # a database whose grants were never made (or were revoked)
        conn.exec_driver_sql(f"REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM {READER_ROLE}")
    refused = run_cli("sql", "SELECT count(*) AS n FROM runs", "--json", env_extra=env, check=False)
    assert refused.returncode == 1 and "permission denied" in refused.stderr, refused.stderr
    run_cli("db", "grant-reader", env_extra=env)
    assert _json.loads(run_cli("sql", "SELECT count(*) AS n FROM runs", "--json", env_extra=env).stdout) == [
        {"n": 0}
    ]
    again = run_cli("db", "grant-reader", env_extra=env)  # idempotent
    assert again.returncode == 0


def test_every_read_command_reads_as_the_reader_role(settings, engine, database_url):
    """`runs`, `show`, `models`, `sweeps`, `sweep show` and `compare` go through the one read-only path:
    on PostgreSQL as `fitstream_reader`. Take the reader's SELECT on `runs` away and each is refused;
    the owner (the test's superuser) could still read, so a command that bypassed the path would pass."""
    if not database_url.startswith("postgresql"):
        pytest.skip("roles and grants are PostgreSQL's; SQLite's read-only file is checked above")
    import json as _json

    from pipeline import events as ev
    from pipeline.consumers.base import Received
    from pipeline.consumers.recorder import write_batch
    from pipeline.db.readonly import READER_ROLE
    from pipeline.db.session import transaction
    from tests.conftest import run_cli, settings_env

    event = ev.build(
        ev.RunQueued,
        run_id="r-reader",
        seq=0,
        name="reader",
        queue="gpu",
        params={"fit.epochs": 3},
        sweep=ev.SweepTrial(
            id="s-reader", name="reader", trial=0, trials=1, spec={"grid": {"fit.epochs": [3]}}
        ),
    )
    with transaction(engine) as conn:
        write_batch(conn, [Received("1-0", event, ev.encode(event)[ev.PAYLOAD_FIELD])])
    env = settings_env(settings)
    commands = [
        ("runs", "--json"),
        ("show", "r-reader", "--json"),
        ("models", "--json"),
        ("sweeps", "--json"),
        ("sweep", "show", "s-reader", "--json"),
        ("compare", "r-reader", "--json"),
    ]
    for command in commands:
        assert run_cli(*command, env_extra=env).returncode == 0, command
    with engine.begin() as conn:
        conn.exec_driver_sql(f"REVOKE SELECT ON runs FROM {READER_ROLE}")
    try:
        for command in commands:
            refused = run_cli(*command, env_extra=env, check=False)
            if command[0] == "models":  # models reads model_versions and model_aliases, not runs
                assert refused.returncode == 0, refused.stderr
                continue
            assert refused.returncode == 1 and "permission denied" in refused.stderr, (
                command,
                refused.stderr,
            )
            assert "Traceback" not in refused.stderr, refused.stderr  # one line a user can act on
        with engine.begin() as conn:
            conn.exec_driver_sql(f"REVOKE SELECT ON model_versions FROM {READER_ROLE}")
        refused = run_cli("models", "--json", env_extra=env, check=False)
        assert refused.returncode == 1 and "permission denied" in refused.stderr, refused.stderr
    finally:
        run_cli("db", "grant-reader", env_extra=env)
    assert _json.loads(run_cli("show", "r-reader", "--json", env_extra=env).stdout)["sweep_id"] == "s-reader"
