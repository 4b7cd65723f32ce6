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
import statistics
import sys
import time
from pathlib import Path

import _common
from _load_deployment import Outcome, one_deployment


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
