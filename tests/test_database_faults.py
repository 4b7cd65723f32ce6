"""Issue 10: a database that is unwell pauses the consumers — nothing is dead-lettered, everything
lands once it is well again — and only an event that fails on its own is dead-lettered; Redis losing
its data (NOGROUP) makes the consumers recreate their group and go on."""

from __future__ import annotations

import json
import sqlite3
import uuid

import psycopg
import pytest
import redis
import sqlalchemy as sa
from psycopg import errors

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.db.session import caused_by_the_data, make_engine
from tests.conftest import POSTGRES_URL, RecorderThread, run_cli, settings_env, wait_for


def _epochs(run_id, count, *, first_seq=1):
    return [ev.build(ev.RunStarted, run_id=run_id, seq=0, name=run_id)] + [
        ev.build(ev.EpochEnd, run_id=run_id, seq=first_seq + i, epoch=i, metrics={"loss": 1.0 / (i + 1)})
        for i in range(count)
    ]


def _recorded(engine, run_id):
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM epoch_metrics WHERE run_id = :r"), {"r": run_id}
        ).scalar()


def test_errors_are_classified_by_sqlstate_and_sqlite_code_not_by_words():
    for cls in (
        errors.DiskFull,
        errors.InsufficientPrivilege,
        errors.TooManyConnections,
        errors.SerializationFailure,
        errors.DeadlockDetected,
        errors.LockNotAvailable,
        errors.AdminShutdown,
        errors.CannotConnectNow,
        errors.ReadOnlySqlTransaction,
        errors.UndefinedTable,
    ):
        assert not caused_by_the_data(cls("no words to match here")), cls
    for cls in (
        errors.NumericValueOutOfRange,
        errors.StringDataRightTruncation,
        errors.UniqueViolation,
        errors.CharacterNotInRepertoire,
    ):
        assert caused_by_the_data(cls("connection locked")), (
            cls
        )  # the words that used to decide mean nothing now
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"
    too_big = sqlite3.DataError("string or blob too big")
    too_big.sqlite_errorname = "SQLITE_TOOBIG"
    assert not caused_by_the_data(full) and caused_by_the_data(too_big)
    # psycopg refuses a NUL in text before sending it: no SQLSTATE, but the data's fault all the same.
    assert caused_by_the_data(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))
    assert not caused_by_the_data(psycopg.OperationalError("connection lost"))


@pytest.fixture
def writer_role(settings, engine, database_url):
    """The recorder connects as an ordinary role (not the superuser owner), whose grants can change."""
    if not database_url.startswith("postgresql"):
        pytest.skip("grants are PostgreSQL's; SQLite has none")
    role = f"fs_writer_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        conn.exec_driver_sql(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    url = (
        sa.engine.make_url(database_url)
        .set(username=role, password=None)
        .render_as_string(hide_password=False)
    )
    yield role, url
    with engine.begin() as conn:
        conn.exec_driver_sql(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
        conn.exec_driver_sql(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {role}")


def test_revoked_insert_pauses_the_recorder_and_nothing_is_dead_lettered(settings, engine, writer_role):
    role, url = writer_role
    stream = EventStream(settings=settings)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"REVOKE INSERT ON epoch_metrics FROM {role}")
    recorder_engine = make_engine(url)
    with RecorderThread(settings, recorder_engine) as running:
        stream.publish(_epochs("revoked", 20))
        wait_for(lambda: stream.consumer_states("recorder"), message="the recorder to say it is paused")
        status = json.loads(run_cli("status", "--json", env_extra=settings_env(settings)).stdout)
        paused = next(g for g in status["consumer_groups"] if g["group"] == "recorder")["paused"]
        assert (
            "permission denied for table epoch_metrics" in next(iter(paused.values()))["reason"]
            and "[42501]" in next(iter(paused.values()))["reason"]
        )
        assert _recorded(engine, "revoked") == 0
        with engine.begin() as conn:
            conn.exec_driver_sql(f"GRANT INSERT ON epoch_metrics TO {role}")
        wait_for(
            lambda: _recorded(engine, "revoked") == 20,
            timeout=60,
            message="everything recorded once writes work",
        )
        wait_for(lambda: not stream.consumer_states("recorder"), message="the paused state cleared")
    recorder_engine.dispose()
    assert stream.dead_letter_count() == 0 and running.loop.stats.dead_lettered == 0
    assert running.loop.stats.pauses == 1
    assert stream.groups()[0]["pending"] == 0


def test_only_the_event_that_fails_on_its_own_is_dead_lettered(settings, engine, recorder):
    stream = EventStream(settings=settings)
    bad = ev.build(
        ev.EpochEnd, run_id="poison", seq=99, epoch=2**70, metrics={"loss": 0.5}
    )  # no column holds it
    stream.publish([*_epochs("poison", 5), bad, *_epochs("healthy", 5)])
    wait_for(
        lambda: _recorded(engine, "poison") == 5 and _recorded(engine, "healthy") == 5,
        message="the good events",
    )
    wait_for(lambda: stream.dead_letter_count() == 1, message="one dead letter")
    [(_id, fields)] = redis.Redis.from_url(settings.redis_url).xrange(stream.dead_letter_stream)
    reason = fields[b"reason"].decode()
    assert bad.id in fields[b"orig." + ev.PAYLOAD_FIELD.encode()].decode()
    assert "22003" in reason or "OverflowError" in reason, reason


def test_redis_losing_the_stream_makes_consumers_recreate_their_group(settings, engine, recorder):
    stream = EventStream(settings=settings)
    stream.publish(_epochs("before", 3))
    wait_for(lambda: _recorded(engine, "before") == 3, message="recorded before")
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(settings.stream)  # what a Redis restart without persistence leaves: no stream, no group
    wait_for(
        lambda: recorder.loop.stats.groups_recreated >= 1 or _group_exists(client, settings.stream),
        timeout=30,
        message="NOGROUP seen",
    )
    stream.publish(_epochs("after", 4))
    wait_for(
        lambda: _recorded(engine, "after") == 4, timeout=30, message="recorded after Redis lost its data"
    )
    assert recorder.thread.is_alive() and recorder.loop.stats.groups_recreated >= 1


def _group_exists(client, stream):
    try:
        return any(g["name"] == b"recorder" for g in client.xinfo_groups(stream))
    except redis.ResponseError:
        return False
