"""``metric_summaries`` always agrees with ``epoch_metrics``: a real recorder on SQLite and PostgreSQL,
fed epochs out of order, replays, an attempt that sends an already-recorded epoch again with other
values, NaN; the migration fills it from a history recorded before it existed."""

from __future__ import annotations

import math
import random

import sqlalchemy as sa
from alembic import command

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.db import migrate
from pipeline.db.session import make_engine
from tests.conftest import RecorderThread, wait_for
from tests.stream_helpers import RECORDED_EVENT_COUNT, publish_all

EXPECTED = """
SELECT s.run_id, s.name, s.min_value, s.min_epoch, s.max_value, s.max_epoch, s.last_value, s.last_epoch
FROM metric_summaries s ORDER BY s.run_id, s.name"""


def _from_epoch_metrics(conn: sa.Connection) -> list[tuple]:
    """The summary recomputed in Python from what epoch_metrics holds."""
    rows = conn.execute(
        sa.text("SELECT run_id, name, epoch, value FROM epoch_metrics ORDER BY run_id, name, epoch")
    ).all()
    out: dict[tuple, list] = {}
    for run_id, name, epoch, value in rows:
        number = None if value is None or math.isnan(value) else value
        s = out.setdefault((run_id, name), [None, None, None, None, None, -1])
        if number is not None and (s[0] is None or number < s[0]):
            s[0], s[1] = number, epoch
        if number is not None and (s[2] is None or number > s[2]):
            s[2], s[3] = number, epoch
        if epoch > s[5]:
            s[4], s[5] = value, epoch
    return [(r, n, *s) for (r, n), s in sorted(out.items())]


def _same(a: list[tuple], b: list[tuple]) -> bool:
    def norm(row: tuple) -> tuple:
        return tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in row)

    return [norm(r) for r in a] == [norm(r) for r in b]


def _epoch(run_id: str, epoch: int, seq: int, metrics: dict) -> ev.Event:
    return ev.build(ev.EpochEnd, run_id=run_id, seq=seq, epoch=epoch, metrics=metrics)


def test_summaries_agree_with_epoch_metrics_through_replays_reruns_and_nan(settings, engine):
    rng = random.Random(11)
    events: list[ev.Event] = []
    for r in range(6):
        run_id = f"run{r}"
        for epoch in range(12):
            loss = round(rng.uniform(0.1, 2.0), 3)
            metrics = {"loss": loss, "val_accuracy": round(rng.uniform(0.0, 1.0), 2)}
            if r == 2 and epoch == 5:
                metrics["loss"] = float("nan")
            if r == 3 and epoch in (3, 7):
                metrics["loss"] = 0.05  # a tie: the earliest epoch is the best one
            events.append(_epoch(run_id, epoch, epoch + 1, metrics))
    rng.shuffle(events)  # out of order
    # An attempt that runs recorded epochs again with other values (epoch_metrics keeps the first).
    rerun = [_epoch("run1", e, 1000 + e, {"loss": -5.0, "val_accuracy": 2.0}) for e in range(4)]
    stream = EventStream(settings=settings)
    publish_all(stream, events, chunk=17)
    with RecorderThread(settings, engine):
        wait_for(lambda: _count(engine, RECORDED_EVENT_COUNT) == len(events), timeout=60, message="recorded")
        publish_all(stream, events[:30] + rerun, chunk=11)  # replays and the re-run
        wait_for(
            lambda: (
                _count(engine, "SELECT count(*) FROM epochs WHERE event_id IS NOT NULL") >= len(events)
                and _count(engine, "SELECT count(*) FROM events") == 0
            ),
            timeout=30,
            message="settled",
        )
        wait_for(
            lambda: stream.groups() and all(g["pending"] == 0 and g["lag"] == 0 for g in stream.groups()),
            timeout=30,
            message="every message handled",
        )
    with engine.connect() as conn:
        got = [tuple(r) for r in conn.execute(sa.text(EXPECTED))]
        assert len(got) == 12 and _same(got, _from_epoch_metrics(conn))
        by_key = {(r[0], r[1]): r for r in got}
        assert by_key[("run3", "loss")][2:4] == (0.05, 3)
        assert by_key[("run1", "loss")][2] != -5.0  # the re-run's values are not in epoch_metrics, nor here
        best = (
            conn.execute(
                sa.text(
                    "SELECT run_id FROM metric_summaries WHERE name = 'val_accuracy' AND max_value IS NOT NULL "
                    "ORDER BY max_value DESC, run_id LIMIT 3"
                )
            )
            .scalars()
            .all()
        )
        expected = (
            conn.execute(
                sa.text(
                    "SELECT run_id FROM epoch_metrics WHERE name = 'val_accuracy' GROUP BY run_id "
                    "ORDER BY max(value) DESC, run_id LIMIT 3"
                )
            )
            .scalars()
            .all()
        )
        assert best == expected


def test_the_migration_fills_summaries_from_an_existing_history(settings, database_url):
    migrate.upgrade(database_url, "0010")
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO epoch_metrics (name, run_id, epoch, value) VALUES "
                "('loss', 'a', 0, 0.9), ('loss', 'a', 1, 0.4), ('loss', 'a', 2, 0.6), ('acc', 'a', 0, 0.5)"
            )
        )
    engine.dispose()
    migrate.upgrade(database_url)
    with engine.connect() as conn:
        got = [tuple(r) for r in conn.execute(sa.text(EXPECTED))]
        assert got == [("a", "acc", 0.5, 0, 0.5, 0, 0.5, 0), ("a", "loss", 0.4, 1, 0.9, 0, 0.6, 2)]
        assert _same(got, _from_epoch_metrics(conn))
    engine.dispose()
    command.downgrade(migrate.alembic_config(database_url), "0010")
    assert "metric_summaries" not in sa.inspect(make_engine(database_url)).get_table_names()


def _count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar())


def test_rebuild_summaries_command_recomputes_from_epoch_metrics(settings, engine):
    from tests.conftest import run_cli, settings_env

    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO epoch_metrics (name, run_id, epoch, value) VALUES ('loss', 'x', 0, 3.0), ('loss', 'x', 1, 2.0)"
            )
        )
    out = run_cli("db", "rebuild-summaries", "--json", env_extra=settings_env(settings))
    assert out.stdout.strip() == '{"summaries": 1}'
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(sa.text(EXPECTED))] == [("x", "loss", 2.0, 1, 3.0, 0, 2.0, 1)]
