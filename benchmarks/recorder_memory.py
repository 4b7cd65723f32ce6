"""Does the recorder's resident memory stay flat over a long stream of events?

What is measured
----------------
A producer **process** publishes ``--events`` ``epoch_end`` events (default
1,000,000, ``--metrics`` 5 each, so 5,000,000 ``epoch_metrics`` rows) to a
unique stream ``fitstream:bench:<hex>`` in chunks of ``--chunk`` (50,000),
pipelined ``--publish-batch`` (1,000) at a time. The payloads are made with
``json.dumps`` in the producer (the first one is checked with
``pipeline.events.decode`` here) so that producing a million events stays cheap.

This process runs the real recorder, ``ConsumerLoop(Recorder(engine),
EventStream(settings=...), batch_size=--batch-size)``, with ``run_once()``
until each chunk is committed and acknowledged, then applies the stream's
retention policy (``EventStream.trim`` with ``stream_retention_seconds=0``:
everything acknowledged is removed) so that Redis memory stays bounded, and
samples:

* this process's ``VmRSS`` and ``VmHWM`` (peak) from ``/proc/self/status``;
* the number of live Python objects the garbage collector tracks (a leak of
  Python objects shows here before it shows in RSS);
* Redis ``used_memory`` and the stream length after trimming;
* the database size (SQLite file + WAL), chunk throughput.

While the recorder consumes chunk *k*, the producer already publishes chunk
*k+1* (at most two chunks in Redis). The first ``--warmup-chunks`` (2) samples
are warm-up (allocator arenas, SQLAlchemy's statement cache, SQLite's page
cache); growth is reported from the first sample after warm-up to the last,
in total and per 100,000 events. A flat line (growth within a few MiB) is
the goal; growth proportional to the events consumed is a leak.

Event order: by default (``--order interleaved``) the runs' events are
interleaved, as concurrent trainings publish them, so every read batch holds
all ``--runs`` runs (default 20). ``--order run-by-run`` publishes each run's
epochs consecutively instead. If ``Recorder.handle`` raises on a batch (before
commit 84c87cf it did for every batch holding several runs: an expanding
``IN`` parameter in the runs upsert cannot be used with executemany),
``ConsumerLoop`` silently retries that batch one event per transaction, which
is two orders of magnitude slower; the script counts such failures per chunk.

Run::

    .venv/bin/python benchmarks/recorder_memory.py [--events 1000000] [--chunk 50000] \\
        [--metrics 5] [--order interleaved|run-by-run] [--backend sqlite|postgresql]

Target: no growth proportional to the number of events (RSS flat after warm-up).
Default size takes about 2-4 minutes on a 2-core machine. No result is asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common


def run_id_for(seed: int, run: int) -> str:
    return f"mem{seed:04d}run{run:08d}"


def payload(index: int, args_tuple: tuple) -> dict[str, str]:  # type: ignore[type-arg]
    """Encoded fields of event ``index`` (same shape as ``pipeline.events.encode`` of an EpochEnd)."""
    n_events, n_runs, n_metrics, seed, interleave = args_tuple  # interleave: bool
    per_run = -(-n_events // n_runs)
    if interleave:
        run, epoch = index % n_runs, index // n_runs
    else:
        run, epoch = index // per_run, index % per_run
    metrics = {f"m{m}": ((index * 7919 + m * 104729) % 100_003) / 100_003 for m in range(n_metrics)}
    event = {
        "v": 1,
        "id": f"{seed:04d}e{index:016d}",
        "run_id": run_id_for(seed, run),
        "seq": epoch + 1,
        "ts": 1_700_000_000.0 + index * 0.01,
        "type": "epoch_end",
        "epoch": epoch,
        "metrics": metrics,
        "learning_rate": 0.001,
        "wall_time_s": 0.2,
        "steps": 45,
        "samples_per_second": 7000.0,
        "steps_per_second": 220.0,
    }
    return {"v": "1", "event": json.dumps(event, separators=(",", ":"))}


def producer_main(
    redis_url: str,
    stream: str,
    args_tuple: tuple,
    publish_batch: int,  # type: ignore[type-arg]
    requests,
    replies,
) -> None:  # type: ignore[no-untyped-def]
    from pipeline.bus import EventStream
    from pipeline.config import Settings

    bus = EventStream(settings=Settings(redis_url=redis_url, stream=stream))
    while True:
        request = requests.get()
        if request is None:
            return
        start, stop = request
        t0 = time.perf_counter()
        for i in range(start, stop, publish_batch):
            bus.publish([payload(j, args_tuple) for j in range(i, min(i + publish_batch, stop))])
        replies.put((start, stop, time.perf_counter() - t0))


def redis_used_memory(client) -> int:  # type: ignore[no-untyped-def]
    return int(client.info("memory")["used_memory"])


def db_size(url: str, engine) -> int:  # type: ignore[no-untyped-def]
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar())


def mib(kib_or_bytes: float, *, kib: bool = True) -> str:
    return f"{kib_or_bytes / (1024 if kib else 1024 * 1024):.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in all (default 1000000)")
    parser.add_argument(
        "--chunk", type=int, default=50_000, help="events per chunk / RSS sample (default 50000)"
    )
    parser.add_argument("--metrics", type=int, default=5, help="metrics per event (default 5)")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs the events belong to (default: events / chunk)"
    )
    parser.add_argument(
        "--order",
        choices=("interleaved", "run-by-run"),
        default="interleaved",
        help="interleave the runs' events (default) or publish run by run",
    )
    parser.add_argument(
        "--batch-size", type=int, default=5000, help="recorder ConsumerLoop batch_size (default 5000)"
    )
    parser.add_argument(
        "--publish-batch", type=int, default=1000, help="events per pipelined publish (default 1000)"
    )
    parser.add_argument("--warmup-chunks", type=int, default=2, help="samples treated as warm-up (default 2)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.events < args.chunk or args.chunk < 1:
        parser.error("--events must be >= --chunk >= 1")
    n_chunks = -(-args.events // args.chunk)
    runs = args.runs or max(1, n_chunks)
    args_tuple = (args.events, runs, args.metrics, args.seed, args.order == "interleaved")

    import redis

    from pipeline import events as ev
    from pipeline.bus import EventStream
    from pipeline.config import Settings
    from pipeline.consumers.base import ConsumerLoop
    from pipeline.consumers.recorder import Recorder
    from pipeline.db import migrate
    from pipeline.db.session import make_engine

    ev.decode(payload(0, args_tuple))  # the hand-made payloads are valid events
    warmup = min(args.warmup_chunks, n_chunks - 1)
    stream = _common.unique_stream()
    client = redis.Redis.from_url(_common.REDIS_URL)
    print(f"recorder_memory: {_common.machine_line()}")
    print(
        f"{args.events} epoch_end events x {args.metrics} metrics in {n_chunks} chunks of {args.chunk}, {runs} runs "
        f"({args.order}), backend={args.backend}, "
        f"recorder batch_size={args.batch_size}, stream={stream}"
    )

    class CountingRecorder(Recorder):
        calls = 0
        failed = 0

        def handle(self, batch):  # type: ignore[no-untyped-def]
            self.calls += 1
            try:
                super().handle(batch)
            except Exception:
                self.failed += 1
                raise

    samples: list[list[str]] = []
    rss_series: list[int] = []
    ctx = mp.get_context("spawn")
    requests, replies = ctx.Queue(), ctx.Queue()
    producer = ctx.Process(
        target=producer_main,
        args=(_common.REDIS_URL, stream, args_tuple, args.publish_batch, requests, replies),
        daemon=True,
    )
    t_start = time.perf_counter()
    with _common.temp_dir() as tmp:
        pg_cm = _common.postgres_database() if args.backend == "postgresql" else None
        url = pg_cm.__enter__() if pg_cm is not None else f"sqlite:///{tmp / 'history.db'}"
        engine = None
        try:
            migrate.upgrade(url)
            engine = make_engine(url)
            settings = Settings(
                redis_url=_common.REDIS_URL,
                database_url=url,
                stream=stream,
                stream_retention_seconds=0,
                consumer_block_ms=100,
            )
            recorder = CountingRecorder(engine)
            loop = ConsumerLoop(
                recorder,
                EventStream(settings=settings),
                consumer_name="bench-memory",
                batch_size=args.batch_size,
            )
            loop.stream.ensure_group(loop.group)
            producer.start()
            bounds = [(k * args.chunk, min((k + 1) * args.chunk, args.events)) for k in range(n_chunks)]
            requests.put(bounds[0])
            published_at = replies.get(timeout=600)
            gc.collect()
            start = _common.rss_kib()
            print(f"RSS before consuming: {mib(start['VmRSS'])} MiB")
            for k, (_lo, hi) in enumerate(bounds):
                if k + 1 < n_chunks:
                    requests.put(bounds[k + 1])  # produce the next chunk while this one is consumed
                t0 = time.perf_counter()
                while loop.stats.processed < hi:
                    loop.run_once()
                elapsed = time.perf_counter() - t0
                loop.stream.trim()
                mem = _common.rss_kib()
                objects = len(gc.get_objects())
                rss_series.append(mem["VmRSS"])
                samples.append(
                    [
                        f"{k + 1}{'*' if k < warmup else ''}",
                        f"{loop.stats.processed:,}",
                        mib(mem["VmRSS"]),
                        mib(mem["VmHWM"]),
                        f"{objects:,}",
                        mib(redis_used_memory(client), kib=False),
                        f"{client.xlen(stream):,}",
                        mib(db_size(url, engine), kib=False),
                        f"{(hi - _lo) / elapsed:,.0f}",
                        f"{recorder.failed}",
                    ]
                )
                print("  chunk " + " | ".join(samples[-1]), flush=True)
                if k + 1 < n_chunks:
                    published_at = replies.get(timeout=600)
            requests.put(None)
            producer.join(timeout=30)
        finally:
            if producer.is_alive():
                producer.kill()
            if engine is not None:
                engine.dispose()
            _common.delete_stream_keys(_common.REDIS_URL, stream)
            if pg_cm is not None:
                pg_cm.__exit__(*sys.exc_info())
    del published_at

    print()
    print(
        _common.table(
            [
                "chunk",
                "events consumed",
                "RSS MiB",
                "peak MiB",
                "gc objects",
                "redis MiB",
                "stream len",
                "db MiB",
                "events/s",
                "failed batches",
            ],
            samples,
        )
    )
    first, last = rss_series[warmup], rss_series[-1]
    consumed_after = (n_chunks - 1 - warmup) * args.chunk
    per_100k = (last - first) / (consumed_after / 100_000) if consumed_after else float("nan")
    print()
    print(
        f"* = warm-up. RSS after warm-up (chunk {warmup + 1}): {mib(first)} MiB; last: {mib(last)} MiB; "
        f"growth {mib(last - first)} MiB ({(last / first - 1) * 100:+.1f}%) over {consumed_after:,} more events "
        f"= {per_100k / 1024:+.2f} MiB per 100k events; peak {mib(max(rss_series))} MiB"
    )
    print(f"recorder handle calls {recorder.calls}, failed (retried event by event) {recorder.failed}")
    print(f"total benchmark time {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
