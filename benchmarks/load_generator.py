"""Load generator: many concurrent runs against the local Redis and PostgreSQL; recorder lag over time.

What is simulated
-----------------
``--runs`` (10,000) training runs at once, each publishing one ``epoch_end`` event (``--metrics``
metrics, 8) every ``--interval-s`` seconds (10), their phases spread evenly over the interval:
``runs / interval`` events/s (1,000) on average. Every ``--burst-every-s`` seconds (30) a random
``--burst-fraction`` of the runs (20 %) each publish ``--burst-events`` more at once (5): 10,000
events in one go, as when many short epochs end together or spooled events come back after a Redis
outage. Every run first publishes its ``run_started``, all within the first interval.

A producer **process** publishes what is due every 50 ms with ``EventStream.publish`` (pipelined,
routed by run id over ``FITSTREAM_STREAM_SHARDS``), for ``--duration-s`` seconds (120). Meanwhile
real recorder processes (``fitstream consume recorder --shard i``, ``--recorders-per-shard`` per
shard) write into a fresh PostgreSQL database (migrated to head, so partitioned tables), and the
main process samples every second, per shard: the recorder group's lag and pending count
(``XINFO GROUPS``, ``XPENDING``) and the **age of the oldest event not yet recorded** (from its
stream id), the figure a user feels ("how far behind is the history?").

Then a **capacity** phase: the producer stops, builds ``--backlog`` (60,000) more events and
publishes them as fast as Redis takes them (well under a second), and the time the recorders take to drain them gives the sustained events/s of
that deployment (events/s per recorder, per shard, per PostgreSQL).

Run once per shard count (``--shards 1,4``), each on its own database and stream, and print both
side by side. No timing is asserted; the figures feed README's "Run at scale".

Run::

    .venv/bin/python benchmarks/load_generator.py [--runs 10000] [--interval-s 10] [--duration-s 120] \\
        [--shards 1,4] [--recorders-per-shard 1] [--backlog 60000] [--results benchmarks/results/x.md]

PostgreSQL: ``FITSTREAM_TEST_POSTGRES_URL`` (default ``postgresql://postgres:postgres@127.0.0.1:5432/test``)
must allow CREATE DATABASE; Redis: ``FITSTREAM_REDIS_URL`` (default the local one).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common

from pipeline import events as ev
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


def _metrics(rng: random.Random, count: int, epoch: int) -> dict[str, float]:
    return {f"m{k}": round(rng.random() / (1 + epoch), 6) for k in range(count)}


def produce(
    redis_url: str, stream: str, shards: int, args: dict, published: mp.Value, phase: mp.Value, go: mp.Event
) -> None:
    """The producer process: the steady schedule with bursts, then (on ``phase`` 1) the backlog."""
    settings = Settings(redis_url=redis_url, stream=stream, stream_shards=shards)
    bus = EventStream(settings=settings)
    rng = random.Random(7)
    runs, interval, metrics = args["runs"], args["interval_s"], args["metrics"]
    run_ids = [f"load-{i:06d}" for i in range(runs)]
    seq = [0] * runs
    epoch = [0] * runs
    go.wait()
    start = time.monotonic()
    # run_started for every run, spread over the first interval; then one epoch_end per interval.
    next_at = [start + interval * i / runs for i in range(runs)]
    started = [False] * runs
    order = sorted(range(runs), key=lambda i: next_at[i])
    next_burst = start + args["burst_every_s"]
    cursor = 0

    def epoch_event(i: int) -> ev.Event:
        seq[i] += 1
        event = ev.build(
            ev.EpochEnd,
            run_id=run_ids[i],
            seq=seq[i],
            epoch=epoch[i],
            metrics=_metrics(rng, metrics, epoch[i]),
            learning_rate=1e-3,
            wall_time_s=interval,
        )
        epoch[i] += 1
        return event

    while phase.value == 0:
        now = time.monotonic()
        due: list[ev.Event] = []
        # The schedule is a ring over the runs ordered by phase: take every run whose time has come.
        while next_at[order[cursor]] <= now:
            i = order[cursor]
            if not started[i]:
                started[i] = True
                due.append(
                    ev.build(
                        ev.RunStarted,
                        run_id=run_ids[i],
                        seq=0,
                        name=f"load-{i % 50}",
                        monitor="val_loss",
                        mode="min",
                        epochs=10_000,
                    )
                )
            else:
                due.append(epoch_event(i))
            next_at[i] += interval
            cursor = (cursor + 1) % runs
        if now >= next_burst:
            next_burst += args["burst_every_s"]
            for i in rng.sample(range(runs), int(runs * args["burst_fraction"])):
                if started[i]:
                    due.extend(epoch_event(i) for _ in range(args["burst_events"]))
        for chunk in range(0, len(due), 2000):
            bus.publish(due[chunk : chunk + 2000])
        with published.get_lock():
            published.value += len(due)
        time.sleep(max(0.0, 0.05 - (time.monotonic() - now)))
    # Capacity: the backlog, built (encoded) first; once the main process saw the steady load
    # drained (phase 3), published as fast as Redis takes it.
    active = [i for i in range(runs) if started[i]]
    backlog = [ev.encode(epoch_event(active[n % len(active)])) for n in range(args["backlog"])]
    phase.value = 2
    while phase.value != 3:
        time.sleep(0.01)
    for chunk in range(0, len(backlog), 2000):
        bus.publish(backlog[chunk : chunk + 2000])
        with published.get_lock():
            published.value += len(backlog[chunk : chunk + 2000])
    phase.value = 4


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


def report(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    lines = [
        f"# Load generator ({time.strftime('%Y-%m-%d')})",
        "",
        _common.machine_line(),
        "",
        f"{args.runs:,} concurrent runs, one epoch_end ({args.metrics} metrics) per run every {args.interval_s:g}s "
        f"(~{args.runs / args.interval_s:,.0f} events/s), bursts of {int(args.runs * args.burst_fraction):,} runs × "
        f"{args.burst_events} events every {args.burst_every_s:g}s, {args.duration_s:g}s; then a backlog of {args.backlog:,} events. "
        "PostgreSQL (partitioned history), the local Redis; recorders are `fitstream consume recorder --shard i` processes.",
        "",
    ]
    head = ["", *[f"{o.shards} shard(s), {o.recorders} recorder(s)" for o in outcomes]]
    scheduled = (
        args.runs / args.interval_s + args.runs * args.burst_fraction * args.burst_events / args.burst_every_s
    )

    def pct(o: Outcome, q: float, attr: str) -> float:
        values = sorted(getattr(s, attr) for s in o.samples)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    rows = [
        [
            "published during the steady phase (events/s)",
            *[f"{o.steady_rate:,.0f} (scheduled {scheduled:,.0f})" for o in outcomes],
        ],
        [
            "age of the oldest unrecorded event: median (s)",
            *[f"{statistics.median(s.oldest_age_s for s in o.samples):.2f}" for o in outcomes],
        ],
        [
            "… p95 / max (s)",
            *[
                f"{pct(o, 0.95, 'oldest_age_s'):.2f} / {max(s.oldest_age_s for s in o.samples):.2f}"
                for o in outcomes
            ],
        ],
        [
            "events not yet recorded: median / max",
            *[
                f"{statistics.median(s.lag_events for s in o.samples):,.0f} / {max(s.lag_events for s in o.samples):,}"
                for o in outcomes
            ],
        ],
        [f"backlog of {args.backlog:,} drained in (s)", *[f"{o.drain_s:.1f}" for o in outcomes]],
        ["sustained ingest (events/s)", *[f"{o.drain_rate:,.0f}" for o in outcomes]],
        ["… metric rows/s", *[f"{o.drain_rate * args.metrics:,.0f}" for o in outcomes]],
        ["… events/s per recorder", *[f"{o.drain_rate / o.recorders:,.0f}" for o in outcomes]],
        ["epoch_metrics rows at the end", *[f"{o.rows:,}" for o in outcomes]],
    ]
    lines += [
        "```",
        _common.table(head, rows),
        "```",
        "",
        "Lag over time (every 10 s: seconds behind / events not yet recorded):",
        "",
        "```",
    ]
    series_head = ["t (s)", *[f"{o.shards} shard(s)" for o in outcomes]]
    series = []
    for second in range(0, int(args.duration_s), 10):
        row: list[object] = [second]
        for o in outcomes:
            near = min(o.samples, key=lambda s: abs(s.t - second)) if o.samples else None
            row.append(f"{near.oldest_age_s:.2f} s / {near.lag_events:,}" if near else "—")
        series.append(row)
    lines += [_common.table(series_head, series), "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--duration-s", type=float, default=120.0)
    parser.add_argument("--metrics", type=int, default=8)
    parser.add_argument("--burst-every-s", type=float, default=30.0)
    parser.add_argument("--burst-fraction", type=float, default=0.2)
    parser.add_argument("--burst-events", type=int, default=5)
    parser.add_argument("--backlog", type=int, default=60_000)
    parser.add_argument(
        "--shards", default="1,4", help="comma-separated shard counts to run, one deployment each"
    )
    parser.add_argument("--recorders-per-shard", type=int, default=1)
    parser.add_argument(
        "--results", type=Path, default=None, help="also write the report to this Markdown file"
    )
    args = parser.parse_args(argv)
    outcomes = []
    for shards in [int(s) for s in args.shards.split(",")]:
        print(
            f"== {shards} shard(s), {shards * args.recorders_per_shard} recorder(s): {args.duration_s:g}s of load ...",
            flush=True,
        )
        outcomes.append(one_deployment(shards, args))
    text = report(outcomes, args)
    _common.emit_report(text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
