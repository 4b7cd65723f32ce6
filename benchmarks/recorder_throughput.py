"""End-to-end recorder throughput: Redis stream -> ``ConsumerLoop(Recorder)`` -> SQL commit.

What is measured
----------------
A producer **process** (``multiprocessing``, spawn) pre-encodes ``--events``
``epoch_end`` events (``pipeline.events.EpochEnd`` + ``events.encode``), spread
over ``--runs`` runs and interleaved run by run as concurrent trainings would
publish them, each carrying ``--metrics`` metrics (defaults: 20,000 events x
10 metrics = 200,000 ``epoch_metrics`` rows over 100 runs). When both sides
are ready it publishes them with ``EventStream.publish`` in pipelined batches
of ``--publish-batch`` (1,000) to a unique stream ``fitstream:bench:<hex>``.

Meanwhile the main process runs the real recorder,
``ConsumerLoop(Recorder(engine), EventStream(settings=...), batch_size=--batch-size)``,
calling ``run_once()`` until ``loop.stats.processed`` (incremented only after
a batch's transaction committed and was acknowledged) reaches the number of
events. The time is taken from the producer's first ``XADD`` round trip to
that point; the row count of ``epoch_metrics`` is checked afterwards.

The peer is a **naive loop** in this script, run on the same data, the same
Redis and the same kind of freshly migrated database:
``XREADGROUP COUNT 1000`` -> ``json.loads`` -> SQLAlchemy Core
``insert(epoch_metrics).on_conflict_do_nothing()`` with one parameter row per
metric (``executemany``) -> commit -> ``XACK``. It does *less* work than the
recorder: no schema validation, no dead-lettering, and it writes only
``epoch_metrics`` (the recorder also writes ``events`` with the raw payload,
``epochs`` and upserts ``runs``), so the ratio shows what the recorder's
bulk path buys (or costs) against the obvious implementation.

Per backend (``--backends sqlite,postgresql``) and peer, ``--repeats`` trials
(fewer if a backend has used ``--budget-s`` seconds) are run in alternating order, each on a fresh database (SQLite: a new file in
a temp dir; PostgreSQL: a temporary database ``fitstream_bench_<hex>``,
truncated between trials, dropped WITH (FORCE) at the end), and the median is
reported: events/s, metric rows/s, the recorder's time inside
``Recorder.handle`` (the SQL transaction) vs outside it (XREADGROUP, decoding
and validating, XACK), and recorder / naive ratios.

Targets: >= 100,000 metric rows/s on SQLite, >= 50,000 metric rows/s on PostgreSQL.

Run::

    .venv/bin/python benchmarks/recorder_throughput.py [--events 20000] [--metrics 10] \\
        [--runs 100] [--batch-size 5000] [--backends sqlite,postgresql] [--repeats 3] [--budget-s 100]

PostgreSQL: ``FITSTREAM_TEST_POSTGRES_URL`` (default
``postgresql://postgres:postgres@127.0.0.1:5432/test``) must allow CREATE DATABASE.
No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

TARGETS = {"sqlite": 100_000, "postgresql": 50_000}
NAIVE_READ = 1000
TABLES = ("epoch_metrics", "epochs", "events", "checkpoints", "runs")


# -- producer (separate process) ----------------------------------------------------
def make_events(n_events: int, n_runs: int, n_metrics: int, seed: int) -> list[dict[str, str]]:
    """Deterministic encoded epoch_end events (same data for every peer and trial)."""
    from pipeline import events as ev

    rng = random.Random(seed)
    run_ids = [f"bench{seed:04d}{rng.getrandbits(64):016x}" for _ in range(n_runs)]
    names = ["loss", "accuracy", "val_loss", "val_accuracy"] + [f"metric_{i}" for i in range(4, n_metrics)]
    names = names[:n_metrics]
    base_ts = 1_700_000_000.0
    out: list[dict[str, str]] = []
    epoch = 0
    while len(out) < n_events:
        for r, run_id in enumerate(run_ids):
            if len(out) >= n_events:
                break
            event = ev.EpochEnd(
                id=f"{seed:04d}{len(out):012d}{r:06d}",
                run_id=run_id,
                seq=epoch + 1,
                ts=base_ts + epoch * 10 + r * 0.001,
                epoch=epoch,
                metrics={name: rng.random() for name in names},
                learning_rate=1e-3,
                wall_time_s=0.2,
                steps=45,
                samples_per_second=7000.0,
                steps_per_second=220.0,
            )
            out.append(ev.encode(event))
        epoch += 1
    return out


def producer_main(
    redis_url: str,
    stream: str,
    n_events: int,
    n_runs: int,
    n_metrics: int,
    seed: int,
    publish_batch: int,
    ready,
    go,
    results,
) -> None:  # type: ignore[no-untyped-def]
    from pipeline.bus import EventStream
    from pipeline.config import Settings

    payloads = make_events(n_events, n_runs, n_metrics, seed)
    bus = EventStream(settings=Settings(redis_url=redis_url, stream=stream))
    bus.client.ping()
    ready.set()
    go.wait()
    t_first = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes on Linux
    for i in range(0, len(payloads), publish_batch):
        bus.publish(payloads[i : i + publish_batch])
    results.put((t_first, time.perf_counter()))


# -- consumer side (main process) ------------------------------------------------------
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


def start_producer(ctx, stream: str, args, seed: int):  # type: ignore[no-untyped-def]
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(
        target=producer_main,
        args=(
            _common.REDIS_URL,
            stream,
            args.events,
            args.runs,
            args.metrics,
            seed,
            args.publish_batch,
            ready,
            go,
            results,
        ),
        daemon=True,
    )
    proc.start()
    if not ready.wait(timeout=300):
        proc.kill()
        raise RuntimeError("producer did not get ready")
    return proc, go, results


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


def reset_postgres(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)}")
    engine.dispose()


def bench_backend(ctx, backend: str, args) -> dict[str, list[Trial]]:  # type: ignore[no-untyped-def]
    from pipeline.db import migrate

    trials: dict[str, list[Trial]] = {"recorder": [], "naive": []}
    runners = {"recorder": run_recorder, "naive": run_naive}
    with _common.temp_dir() as tmp:
        pg_cm = _common.postgres_database() if backend == "postgresql" else None
        pg_url = pg_cm.__enter__() if pg_cm is not None else None
        try:
            if pg_url is not None:
                migrate.upgrade(pg_url)
            t_backend = time.perf_counter()
            for rep in range(args.repeats):
                if rep and time.perf_counter() - t_backend > args.budget_s:
                    print(
                        f"  {backend}: --budget-s {args.budget_s:g}s spent after {rep} repeat(s); not starting more"
                    )
                    break
                order = ("recorder", "naive") if rep % 2 == 0 else ("naive", "recorder")
                for peer in order:
                    if pg_url is not None:
                        reset_postgres(pg_url)
                        url = pg_url
                    else:
                        url = f"sqlite:///{tmp / f'{peer}-{rep}.db'}"
                        migrate.upgrade(url)
                    trial = runners[peer](ctx, url, args, seed=args.seed)
                    trials[peer].append(trial)
                    print(
                        f"  {backend:<10} {peer:<8} rep {rep + 1}/{args.repeats}: {trial.seconds:.3f}s, "
                        f"{trial.metric_rows} metric rows, {trial.batches} batches"
                        + (
                            f", {trial.handle_calls} handle calls ({trial.handle_failed} failed)"
                            if peer == "recorder"
                            else ""
                        ),
                        flush=True,
                    )
        finally:
            if pg_cm is not None:
                pg_cm.__exit__(*sys.exc_info())
    return trials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, default=20_000, help="epoch_end events per trial (default 20000)"
    )
    parser.add_argument("--metrics", type=int, default=10, help="metrics per event (default 10)")
    parser.add_argument("--runs", type=int, default=100, help="runs the events are spread over (default 100)")
    parser.add_argument(
        "--batch-size", type=int, default=5000, help="recorder ConsumerLoop batch_size (default 5000)"
    )
    parser.add_argument(
        "--publish-batch", type=int, default=1000, help="events per pipelined publish (default 1000)"
    )
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--repeats", type=int, default=3, help="trials per backend and peer (default 3)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=100.0,
        help="start no further repeat on a backend after this many seconds (default 100)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in TARGETS:
            parser.error(f"unknown backend {backend!r}; use sqlite and/or postgresql")

    ctx = mp.get_context("spawn")
    expected_rows = args.events * args.metrics
    print(f"recorder_throughput: {_common.machine_line()}")
    print(
        f"{args.events} epoch_end events x {args.metrics} metrics = {expected_rows} metric rows over {args.runs} runs; "
        f"recorder batch_size={args.batch_size}, naive read count={NAIVE_READ}, publish batch={args.publish_batch}, "
        f"repeats={args.repeats}; run id {uuid.uuid4().hex[:8]}"
    )
    t_start = time.perf_counter()
    all_trials = {backend: bench_backend(ctx, backend, args) for backend in backends}

    rows = []
    notes = []
    for backend, trials in all_trials.items():
        med = {peer: _common.median([t.seconds for t in ts]) for peer, ts in trials.items()}
        for peer in ("recorder", "naive"):
            ts = trials[peer]
            secs = med[peer]
            ok_rows = all(t.metric_rows == expected_rows and t.events == args.events for t in ts)
            handle = (
                _common.median([t.handle_seconds for t in ts if t.handle_seconds is not None])
                if peer == "recorder"
                else None
            )
            target = TARGETS[backend]
            metric_rate = expected_rows / secs
            rows.append(
                [
                    backend,
                    peer,
                    len(ts),
                    f"{secs:.3f}",
                    f"{args.events / secs:,.0f}",
                    f"{metric_rate:,.0f}",
                    "1.00" if peer == "naive" else f"{med['naive'] / secs:.2f}",
                    f"{handle:.3f}" if handle is not None else "-",
                    f"{secs - handle:.3f}" if handle is not None else "-",
                    f"{_common.median([t.publish_seconds for t in ts]):.3f}",
                    f"{_common.median([t.handle_calls for t in ts]):.0f}/{_common.median([t.handle_failed for t in ts]):.0f}"
                    if peer == "recorder"
                    else "-",
                    "yes" if ok_rows else "NO",
                    f">= {target:,}" if peer == "recorder" else "-",
                    ("met" if metric_rate >= target else "NOT met") if peer == "recorder" else "-",
                ]
            )
            failures = {t.failure for t in ts if t.failure}
            for failure in failures:
                notes.append(
                    f"{backend}/{peer}: Recorder.handle raised on a batch; ConsumerLoop retried it one event per "
                    f"transaction (median {_common.median([t.handle_failed for t in ts]):.0f} failed batches per trial): "
                    f"{failure}"
                )
            if not ok_rows:
                notes.append(f"{backend}/{peer}: row counts {[t.metric_rows for t in ts]} != {expected_rows}")
    print()
    print(
        _common.table(
            [
                "backend",
                "peer",
                "trials",
                "median s",
                "events/s",
                "metric rows/s",
                "speed vs naive",
                "in handle s",
                "outside s",
                "publish s",
                "handle calls/failed",
                "rows ok",
                "target rows/s",
                "target",
            ],
            rows,
        )
    )
    print()
    print(
        "speed vs naive = naive time / recorder time (>1: recorder faster). 'in handle' = time inside "
        "Recorder.handle (the SQL transaction); 'outside' = XREADGROUP + decode/validate + XACK + waiting; "
        "'publish' = producer's own publish time (separate process); 'handle calls/failed' = "
        "Recorder.handle calls per trial and how many raised (a raising batch is retried event by event)."
    )
    for note in notes:
        print(f"NOTE: {note}")
    print(f"total benchmark time {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
