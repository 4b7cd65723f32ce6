"""Alembic owns the schema; the recorder refuses a stale one; `fitstream sql` is read-only by the database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from pipeline.consumers.recorder import Recorder
from pipeline.db import migrate
from pipeline.db.models import Base, is_partition
from pipeline.db.session import make_engine
from pipeline.errors import SchemaNotAtHeadError
from tests.conftest import run_cli, settings_env

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_migrations_create_exactly_the_models_schema(database_url):
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    # PostgreSQL's partitions of the history tables are storage, not schema (migration 0010).
    only_schema = {"include_name": lambda name, type_, _parent: not (type_ == "table" and is_partition(name))}
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts=only_schema), Base.metadata)
    engine.dispose()
    assert diff == [], f"migrations and pipeline/db/models.py disagree: {diff}"


def test_downgrade_and_upgrade_again(database_url):
    migrate.upgrade(database_url)
    migrate.upgrade(database_url, "head")  # idempotent
    from alembic import command

    command.downgrade(migrate.alembic_config(database_url), "base")
    engine = make_engine(database_url)
    assert "runs" not in sa.inspect(engine).get_table_names()
    engine.dispose()
    assert migrate.upgrade(database_url) == migrate.head_revision()


def test_recorder_refuses_a_database_without_the_schema(database_url):
    engine = make_engine(database_url)
    with pytest.raises(SchemaNotAtHeadError, match="fitstream db upgrade"):
        Recorder(engine)
    engine.dispose()


def test_recorder_refuses_an_old_schema(database_url):
    engine = make_engine(database_url)
    migrate.upgrade(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    head = migrate.head_revision()
    assert head == max(p.name[:4] for p in (REPO_ROOT / "migrations" / "versions").glob("0*.py"))
    with pytest.raises(
        SchemaNotAtHeadError,
        match=rf"at schema revision 0000, this Fitstream needs {head}; run: fitstream db upgrade",
    ):
        Recorder(engine)
    engine.dispose()


def test_cli_recorder_exits_with_the_upgrade_command(settings):
    result = run_cli("consume", "recorder", env_extra=settings_env(settings), check=False)
    assert result.returncode == 1
    assert "fitstream db upgrade" in result.stderr


def test_sql_is_read_only_at_the_database(settings, engine):
    env = settings_env(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO runs (run_id, name, status, epochs_completed) VALUES ('r1', 'x', 'completed', 3)"
        )
    for statement in (
        "DELETE FROM runs",
        "UPDATE runs SET status = 'failed'",
        "INSERT INTO runs (run_id, status, epochs_completed) VALUES ('r2', 'running', 0)",
        "DROP TABLE runs",
        "CREATE TABLE sneaky (x int)",
        # Comments and a leading SELECT do not fool the database.
        "/* SELECT */ DELETE FROM runs",
    ):
        result = run_cli("sql", statement, env_extra=env, check=False)
        assert result.returncode == 1, statement
        assert "read-only" in result.stderr, result.stderr
        assert result.stdout == ""
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM runs")).scalars().all() == ["completed"]

    rows = json.loads(
        run_cli(
            "sql", "SELECT run_id, epochs_completed FROM runs WHERE name LIKE 'x%'", "--json", env_extra=env
        ).stdout
    )
    assert rows == [{"run_id": "r1", "epochs_completed": 3}]


def test_sql_reports_bad_queries_on_stderr(settings, engine):
    result = run_cli("sql", "SELECT nope FROM nowhere", env_extra=settings_env(settings), check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert "nowhere" in result.stderr


def test_a_run_id_prefix_is_matched_literally(engine):
    import sqlalchemy as sa

    from pipeline.db.queries import resolve_run_id
    from pipeline.errors import RunNotFoundError

    with engine.begin() as conn:
        for run_id in ("a_b1", "axb2", "c%d3", "cxd4"):
            conn.execute(
                sa.text(
                    "INSERT INTO runs (run_id, name, status, epochs_completed) VALUES (:r, 'n', 'completed', 0)"
                ),
                {"r": run_id},
            )
    assert resolve_run_id(engine, "a_b") == "a_b1"  # '_' is a character, not LIKE's "any one"
    assert resolve_run_id(engine, "c%d") == "c%d3"  # '%' too
    with pytest.raises(RunNotFoundError):
        resolve_run_id(engine, "a%")  # no run id starts with "a%"
