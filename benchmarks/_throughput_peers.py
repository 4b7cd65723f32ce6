"""``recorder_throughput.py``'s peers: the real recorder and the naive loop, one trial each.

Not a benchmark itself. ``run_recorder`` drives ``ConsumerLoop(Recorder)`` (timing its
transactions), ``run_naive`` the obvious XREADGROUP -> insert -> XACK loop; both consume what
``_throughput_producer`` publishes and return a ``Trial`` with the time from the first ``XADD``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import _common
from _throughput_producer import start_producer

NAIVE_READ = 1000


@dataclass
class Trial:
    peer: str
    seconds: float
    publish_seconds: float
    events: int
    metric_rows: int
    handle_seconds: float | None = None
    batches: int = 0
    handle_calls: int = 0
    handle_failed: int = 0
    failure: str | None = None


def count_metrics(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT COUNT(*) FROM epoch_metrics").scalar())


def run_recorder(ctx, url: str, args, seed: int) -> Trial:  # type: ignore[no-untyped-def]
    from pipeline.bus import EventStream
    from pipeline.config import Settings
    from pipeline.consumers.base import ConsumerLoop
    from pipeline.consumers.recorder import Recorder
    from pipeline.db.session import make_engine

    class TimedRecorder(Recorder):
        """The real Recorder; only adds up the time spent in its transaction."""

        handle_seconds = 0.0
        calls = 0
        failed = 0
        failure: str | None = None

        def handle(self, batch, prepared=None):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            self.calls += 1
            try:
                super().handle(batch, prepared)
            except Exception as exc:
                # ConsumerLoop swallows a failed batch and retries it one event per transaction;
                # count it so that the figures say so.
                self.failed += 1
                if self.failure is None:
                    self.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                raise
            finally:
                self.handle_seconds += time.perf_counter() - t0

    stream = _common.unique_stream()
    engine = make_engine(url)
    try:
        settings = Settings(
            redis_url=_common.REDIS_URL, database_url=url, stream=stream, consumer_block_ms=100
        )
        recorder = TimedRecorder(engine)
        loop = ConsumerLoop(
            recorder,
            EventStream(settings=settings),
            consumer_name="bench-recorder",
            batch_size=args.batch_size,
        )
        loop.stream.ensure_group(loop.group)
        proc, go, results = start_producer(ctx, stream, args, seed)
        go.set()
        while loop.stats.processed < args.events:
            loop.run_once()
        t_end = time.perf_counter()
        t_first, t_published = results.get(timeout=60)
        proc.join(timeout=30)
        rows = count_metrics(engine)
        return Trial(
            "recorder",
            t_end - t_first,
            t_published - t_first,
            loop.stats.processed,
            rows,
            recorder.handle_seconds,
            loop.stats.batches,
            recorder.calls,
            recorder.failed,
            recorder.failure,
        )
    finally:
        engine.dispose()
        _common.delete_stream_keys(_common.REDIS_URL, stream)


def run_naive(ctx, url: str, args, seed: int) -> Trial:  # type: ignore[no-untyped-def]
    import redis
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql, sqlite

    from pipeline.db.session import make_engine

    stream = _common.unique_stream()
    engine = make_engine(url)  # same engine settings (SQLite: WAL, synchronous=NORMAL)
    client = redis.Redis.from_url(_common.REDIS_URL)
    try:
        table = sa.Table("epoch_metrics", sa.MetaData(), autoload_with=engine)
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        statement = insert(table).on_conflict_do_nothing()
        client.xgroup_create(stream, "naive", id="0", mkstream=True)
        proc, go, results = start_producer(ctx, stream, args, seed)
        go.set()
        done = batches = 0
        while done < args.events:
            reply = client.xreadgroup("naive", "bench-naive", {stream: ">"}, count=NAIVE_READ, block=100)
            ids, rows = [], []
            for _stream, entries in reply or []:
                for message_id, fields in entries:
                    ids.append(message_id)
                    event = json.loads(fields[b"event"])
                    if event["type"] == "epoch_end":
                        run_id, epoch = event["run_id"], event["epoch"]
                        rows.extend(
                            {"run_id": run_id, "name": name, "epoch": epoch, "value": value}
                            for name, value in event["metrics"].items()
                        )
            if not ids:
                continue
            with engine.begin() as conn:
                if rows:
                    conn.execute(statement, rows)
            client.xack(stream, "naive", *ids)
            done += len(ids)
            batches += 1
        t_end = time.perf_counter()
        t_first, t_published = results.get(timeout=60)
        proc.join(timeout=30)
        return Trial(
            "naive", t_end - t_first, t_published - t_first, done, count_metrics(engine), None, batches
        )
    finally:
        client.close()
        engine.dispose()
        _common.delete_stream_keys(_common.REDIS_URL, stream)
