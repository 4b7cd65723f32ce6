"""``load_generator.py``'s deployment: recorders, the producer and the lag sampled once a second.

Not a benchmark itself. ``one_deployment`` runs the whole load against one shard count, on its
own PostgreSQL database and stream, and returns its ``Outcome``: the lag samples of the steady
phase and the rate at which the recorders drained the backlog.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common
from _load_producer import produce

from pipeline.bus import EventStream
from pipeline.config import Settings

GROUP = "recorder"


@dataclass
class Sample:
    t: float  # seconds since the start
    published: int
    lag_events: int  # published, not yet delivered to a recorder, plus delivered and not acknowledged
    oldest_age_s: float  # age of the oldest event not yet recorded (0 when none)


@dataclass
class Outcome:
    shards: int
    recorders: int
    samples: list[Sample] = field(default_factory=list)
    published: int = 0
    steady_rate: float = 0.0  # events/s published during the steady phase
    drain_rate: float = 0.0  # events/s recorded while draining the backlog
    drain_s: float = 0.0
    rows: int = 0


def shard_lag(shard: EventStream, now_ms: int) -> tuple[int, float]:
    """(events not yet recorded, age in seconds of the oldest of them) on one shard."""
    groups = [g for g in shard.groups() if g["name"] == GROUP]
    if not groups:
        length = int(shard.client.xlen(shard.stream))
        first = shard.client.xrange(shard.stream, count=1)
        return length, (now_ms - int(first[0][0].split(b"-")[0])) / 1000 if first else 0.0
    group = groups[0]
    pending = int(group.get("pending") or 0)
    lag = int(group.get("lag") or 0)
    oldest_ms = None
    summary = shard.client.xpending(shard.stream, GROUP) if pending else None
    if summary and summary.get("min"):  # acknowledged meanwhile: no minimum any more
        oldest = summary["min"]
        oldest_ms = int((oldest.decode() if isinstance(oldest, bytes) else str(oldest)).split("-")[0])
    elif lag:
        last = str(group["last-delivered-id"])
        after = shard.client.xrange(shard.stream, min=f"({last}", count=1)
        if after:
            oldest_ms = int(after[0][0].split(b"-")[0])
    return pending + lag, (now_ms - oldest_ms) / 1000 if oldest_ms is not None else 0.0


def start_recorders(
    env: dict[str, str], shards: int, per_shard: int, log_dir: Path
) -> list[subprocess.Popen]:
    procs = []
    for shard in range(shards):
        for k in range(per_shard):
            log = open(log_dir / f"recorder-{shard}-{k}.log", "wb")
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "pipeline.cli.main",
                        "consume",
                        "recorder",
                        "--shard",
                        str(shard),
                        "--name",
                        f"load-{shard}-{k}",
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return procs


def one_deployment(shards: int, args: argparse.Namespace) -> Outcome:
    from pipeline.db import migrate

    outcome = Outcome(shards=shards, recorders=shards * args.recorders_per_shard)
    stream = _common.unique_stream()
    with _common.postgres_database() as url, _common.temp_dir() as tmp:
        migrate.upgrade(url)
        settings = Settings(
            redis_url=_common.REDIS_URL, database_url=url, stream=stream, stream_shards=shards
        )
        bus = EventStream(settings=settings)
        for shard in bus.all_shards():
            shard.ensure_group(GROUP)
        env = {
            **os.environ,
            "FITSTREAM_REDIS_URL": _common.REDIS_URL,
            "FITSTREAM_DATABASE_URL": url,
            "FITSTREAM_STREAM": stream,
            "FITSTREAM_STREAM_SHARDS": str(shards),
            "FITSTREAM_HOME": str(tmp / "home"),
            "PYTHONPATH": str(_common.REPO),
        }
        recorders = start_recorders(env, shards, args.recorders_per_shard, tmp)
        ctx = mp.get_context("spawn")
        published, phase, go = ctx.Value("q", 0), ctx.Value("i", 0), ctx.Event()
        producer = ctx.Process(
            target=produce, args=(_common.REDIS_URL, stream, shards, vars(args), published, phase, go)
        )
        producer.start()
        try:
            time.sleep(3)  # recorders and the producer up
            go.set()
            start = time.monotonic()
            while (t := time.monotonic() - start) < args.duration_s:
                outcome.samples.append(_sample(bus, t, published.value))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - start - t)))
            phase.value = 1  # the producer stops the steady load and builds the backlog
            outcome.steady_rate = published.value / (time.monotonic() - start)
            while phase.value == 1:
                time.sleep(0.01)
            # What the steady load left is recorded first, so that the capacity phase times the backlog alone.
            _wait_drained(bus, published.value, timeout=300)
            drain_start = time.monotonic()
            phase.value = 3
            while phase.value != 4:
                time.sleep(0.01)
            _wait_drained(bus, published.value, timeout=600)
            outcome.drain_s = time.monotonic() - drain_start
            outcome.drain_rate = args.backlog / outcome.drain_s
            outcome.published = published.value
        finally:
            producer.join(timeout=5 if phase.value == 4 else 0)
            if producer.is_alive():
                producer.terminate()
            for proc in recorders:
                os.killpg(proc.pid, signal.SIGTERM)
            for proc in recorders:
                proc.wait(timeout=60)
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.connect() as conn:
            outcome.rows = int(conn.execute(sa.text("SELECT count(*) FROM epoch_metrics")).scalar() or 0)
        engine.dispose()
        _common.delete_stream_keys(_common.REDIS_URL, stream)
    return outcome


def _sample(bus: EventStream, t: float, published: int) -> Sample:
    now_ms = int(time.time() * 1000)
    lags = [shard_lag(shard, now_ms) for shard in bus.all_shards()]
    return Sample(
        t=t, published=published, lag_events=sum(n for n, _ in lags), oldest_age_s=max(age for _, age in lags)
    )


def _wait_drained(bus: EventStream, published: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = sum(int(s.client.xlen(s.stream)) for s in bus.all_shards())
        if (
            total >= published
            and sum(shard_lag(s, int(time.time() * 1000))[0] for s in bus.all_shards()) == 0
        ):
            return
        time.sleep(0.05)
    raise SystemExit(f"the recorders did not catch up within {timeout:.0f}s")
