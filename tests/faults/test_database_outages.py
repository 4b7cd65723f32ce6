"""Faults 2 and 3: PostgreSQL restarted while the recorder writes, and PostgreSQL refusing writes
for 20 s. The recorder pauses and goes on; nothing is lost, repeated or dead-lettered."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa

from pipeline.bus import EventStream
from pipeline.config import Settings
from pipeline.db import migrate
from pipeline.db.session import make_engine
from tests.conftest import wait_for
from tests.faults.conftest import count_recorded, wait_recorded
from tests.faults.test_recorder_sigkills import interleaved, start_recorder
from tests.stream_helpers import RECORDED_EVENT_COUNT, epoch_events

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def publish_steadily(stream: EventStream, items: list, *, chunk: int, every_s: float) -> threading.Thread:
    def publish() -> None:
        for start in range(0, len(items), chunk):
            stream.publish(items[start : start + chunk])
            time.sleep(every_s)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    return thread


def runs_of(runs: int, epochs: int) -> list:
    every = epoch_events(runs, epochs, 3)
    return interleaved([every[r * (epochs + 2) : (r + 1) * (epochs + 2)] for r in range(runs)])


def recorded(engine: sa.Engine) -> int:
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(RECORDED_EVENT_COUNT)).scalar()
    except sa.exc.DBAPIError:
        return -1


def test_postgres_restarted_while_the_recorder_writes_loses_nothing(
    private_postgres, redis_url, stream_name, tmp_path, ledger
):
    settings = Settings(
        redis_url=redis_url,
        database_url=private_postgres.url,
        stream=stream_name,
        home=tmp_path / "home",
        claim_idle_ms=1000,
        consumer_block_ms=100,
    )
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    items = runs_of(10, 400)  # 4,020 events published over about 8 s
    stream = EventStream(settings=settings)
    stream.ensure_group("recorder")
    recorder = start_recorder(settings, "rec", "--batch-size", "100")
    try:
        publisher = publish_steadily(stream, items, chunk=100, every_s=0.2)
        wait_for(lambda: recorded(engine) > 800, timeout=60, message="the recorder writing")
        private_postgres.stop("fast")  # terminates the recorder's connections mid-write
        during = stream.client.xlen(settings.stream)
        time.sleep(3)
        private_postgres.start()
        publisher.join(timeout=60)
        engine.dispose()
        wait_recorded(engine, len(items), timeout=120)
    finally:
        recorder.send_signal(signal.SIGTERM)
        _out, err = recorder.communicate(timeout=60)
    row = count_recorded(
        engine,
        stream,
        "2. PostgreSQL restarted while the recorder writes",
        (e.id for e in items),
        note=f"down 3 s with {during} of {len(items)} published",
    )
    ledger.append(row)
    engine.dispose()
    assert (row.recorded, row.lost, row.duplicated, row.dead_lettered) == (len(items), 0, 0, 0), err
    assert err.count("paused — nothing is dead-lettered") == 1 and err.count("resumed") == 1, (
        err
    )  # once per change


class WriteRefusal:
    """Makes the database refuse the recorder's writes and lets them through again.

    PostgreSQL: the recorder's own role loses INSERT. SQLite: another connection holds an exclusive
    lock on the file (a user's long write transaction), so every write answers "database is locked".
    """

    def __init__(self, engine: sa.Engine, database_url: str) -> None:
        self.engine, self.database_url = engine, database_url
        self.role = f"fs_fault_{time.time_ns() % 10**9}"
        self.locker: sqlite3.Connection | None = None
        if self.is_postgres:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"CREATE ROLE {self.role} LOGIN")
                conn.exec_driver_sql(
                    f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {self.role}"
                )
                conn.exec_driver_sql(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {self.role}")

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def recorder_url(self) -> str:
        if not self.is_postgres:
            return self.database_url
        return (
            sa.engine.make_url(self.database_url)
            .set(username=self.role, password=None)
            .render_as_string(hide_password=False)
        )

    def refuse(self) -> None:
        if self.is_postgres:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f"REVOKE INSERT ON ALL TABLES IN SCHEMA public FROM {self.role}")
        else:
            self.locker = sqlite3.connect(
                sa.engine.make_url(self.database_url).database, isolation_level=None
            )
            self.locker.execute("BEGIN EXCLUSIVE")

    def allow(self) -> None:
        if self.is_postgres:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f"GRANT INSERT ON ALL TABLES IN SCHEMA public TO {self.role}")
        elif self.locker is not None:
            self.locker.execute("ROLLBACK")
            self.locker.close()
            self.locker = None

    def close(self) -> None:
        self.allow()
        if self.is_postgres:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f"DROP OWNED BY {self.role}")
                conn.exec_driver_sql(f"DROP ROLE {self.role}")


def test_database_refusing_writes_for_20_seconds_dead_letters_nothing(settings, engine, database_url, ledger):
    refusal = WriteRefusal(engine, database_url)
    items = runs_of(5, 200)
    first, rest = items[:300], items[300:]
    stream = EventStream(settings=settings)
    stream.ensure_group("recorder")
    recorder = start_recorder(
        settings.model_copy(update={"database_url": refusal.recorder_url}), "rec", "--batch-size", "50"
    )
    try:
        stream.publish(first)
        wait_recorded(engine, len(first), timeout=60)
        refusal.refuse()
        refused_at = time.monotonic()
        stream.publish(rest)
        time.sleep(20)
        assert stream.client.xlen(stream.dead_letter_stream) == 0, (
            "refused writes are the database's fault, not the events'"
        )
        if refusal.is_postgres:  # SQLite's writer waits for the lock instead (busy timeout 30 s)
            states = stream.consumer_states("recorder")
            assert any(state.get("state") == "paused" for state in states.values()), states
        # Stopped while the database refuses: it exits cleanly and leaves its batch pending.
        recorder.send_signal(signal.SIGTERM)
        _out, err = recorder.communicate(timeout=60)
        assert recorder.returncode == 0, err
        assert stream.client.xpending(settings.stream, "recorder")["pending"] > 0
        assert stream.client.xlen(stream.dead_letter_stream) == 0
        refusal.allow()
        refused_for = time.monotonic() - refused_at
        assert recorded(engine) == len(first), "nothing was written while writes were refused"
        recorder = start_recorder(
            settings.model_copy(update={"database_url": refusal.recorder_url}),
            "survivor",
            "--batch-size",
            "50",
        )
        wait_recorded(engine, len(items), timeout=120)
    finally:
        recorder.send_signal(signal.SIGTERM)
        _out, more = recorder.communicate(timeout=60)
        err = locals().get("err", "") + more
        refusal.close()
    how = "INSERT revoked" if refusal.is_postgres else "file locked"
    row = count_recorded(
        engine,
        stream,
        f"3. database refusing writes 20 s ({how})",
        (e.id for e in items),
        note=f"refused {refused_for:.0f} s, {len(rest)} waiting; stopped while refused, restarted",
    )
    ledger.append(row)
    assert (row.recorded, row.lost, row.duplicated, row.dead_lettered) == (len(items), 0, 0, 0), err
