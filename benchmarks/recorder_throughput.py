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
import multiprocessing as mp
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from _throughput_peers import NAIVE_READ, Trial, run_naive, run_recorder

TARGETS = {"sqlite": 100_000, "postgresql": 50_000}
TABLES = ("epoch_metrics", "epochs", "events", "checkpoints", "runs")


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
