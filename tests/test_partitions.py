"""On PostgreSQL the metric tables and ``events`` are partitioned parents (migration 0010): a real
recorder writes through them, each run's rows live in one partition, the documented queries and a
replay's exactly-once merge work unchanged, and a downgrade and upgrade keep every row."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.db import migrate
from pipeline.db.models import PARTITIONED_TABLES, is_partition
from tests.conftest import RecorderThread, wait_for
from tests.stream_helpers import RECORDED_EVENT_COUNT, epoch_events, publish_all


def _postgresql_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("partitioning is PostgreSQL's; SQLite keeps plain tables")


def _partitions(conn: sa.Connection, table: str) -> list[str]:
    return sorted(
        conn.execute(
            sa.text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST(:t AS regclass)"
            ),
            {"t": table},
        ).scalars()
    )


def test_the_history_tables_are_partitioned_and_each_run_lives_in_one_partition(
    settings, engine, database_url
):
    _postgresql_only(database_url)
    with engine.connect() as conn:
        parents = set(
            conn.execute(
                sa.text("SELECT c.relname FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid")
            ).scalars()
        )
        assert parents == set(PARTITIONED_TABLES)
        for table in PARTITIONED_TABLES:
            names = _partitions(conn, table)
            assert names == [f"{table}_p{i:02d}" for i in range(16)] and all(is_partition(n) for n in names)

    stream = EventStream(settings=settings)
    events = epoch_events(run_count=24, epochs=5, metrics=3)
    batches = [
        ev.build(
            ev.BatchEnd,
            run_id="run00000",
            seq=1000 + s,
            epoch=0,
            batch=s,
            step=s,
            metrics={"loss": 1.0 / (s + 1)},
        )
        for s in range(40)
    ]
    publish_all(stream, events + batches)
    publish_all(stream, events[:50])  # a replay: written once
    with RecorderThread(settings, engine):
        wait_for(
            lambda: _count(engine, RECORDED_EVENT_COUNT) == len(events),
            timeout=60,
            message="every event recorded",
        )
        wait_for(
            lambda: _count(engine, "SELECT count(*) FROM batch_metrics") == 40,
            timeout=30,
            message="batch rows",
        )
    with engine.connect() as conn:
        assert _count(engine, "SELECT count(*) FROM epoch_metrics") == 24 * 5 * 3
        spread = conn.execute(
            sa.text("SELECT run_id, count(DISTINCT tableoid) FROM epoch_metrics GROUP BY run_id")
        ).all()
        assert len(spread) == 24 and all(n == 1 for _run, n in spread)  # a run's curve is in one partition
        used = conn.execute(sa.text("SELECT count(DISTINCT tableoid) FROM epoch_metrics")).scalar()
        assert used > 1  # and the runs are spread over several
        # The README's curve query, and the plan reads one partition for it.
        curve = conn.execute(
            sa.text(
                "SELECT epoch, value FROM epoch_metrics WHERE run_id = 'run00007' AND name = 'm1' ORDER BY epoch"
            )
        ).all()
        assert [tuple(r) for r in curve] == [(e, float(e * 10 + 1)) for e in range(5)]
        plan = "\n".join(
            conn.execute(
                sa.text(
                    "EXPLAIN SELECT epoch, value FROM epoch_metrics WHERE run_id = 'run00007' AND name = 'm1'"
                )
            ).scalars()
        )
        assert sum("epoch_metrics_p" in line for line in plan.splitlines()) == 1, plan
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM batch_metrics WHERE run_id = 'run00000' AND name = 'loss'")
            ).scalar()
            == 40
        )


def test_downgrade_to_plain_tables_and_back_keeps_every_row(settings, engine, database_url):
    _postgresql_only(database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO epoch_metrics (name, run_id, epoch, value) VALUES ('loss', 'a', 0, 1.5), ('loss', 'b', 1, 0.5)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO batch_metrics (run_id, name, step, epoch, value) VALUES ('a', 'loss', 7, 0, 2.5)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO events (event_id, run_id, seq, type, ts, payload) "
                "VALUES ('e1', 'a', 0, 'run_started', now(), '{}')"
            )
        )
    engine.dispose()
    command.downgrade(migrate.alembic_config(database_url), "0009")
    with engine.connect() as conn:
        parents = conn.execute(sa.text("SELECT count(*) FROM pg_partitioned_table")).scalar()
        assert parents == 0 and _partitions(conn, "epoch_metrics") == []
        assert conn.execute(sa.text("SELECT count(*) FROM epoch_metrics")).scalar() == 2
    engine.dispose()
    migrate.upgrade(database_url)
    with engine.connect() as conn:
        assert len(_partitions(conn, "epoch_metrics")) == 16
        assert [
            tuple(r)
            for r in conn.execute(sa.text("SELECT run_id, epoch, value FROM epoch_metrics ORDER BY run_id"))
        ] == [("a", 0, 1.5), ("b", 1, 0.5)]
        assert conn.execute(sa.text("SELECT value FROM batch_metrics WHERE step = 7")).scalar() == 2.5
        assert conn.execute(sa.text("SELECT run_id FROM events WHERE event_id = 'e1'")).scalar() == "a"


def _count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar())
