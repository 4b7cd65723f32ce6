"""The queries users run, on a 10-million-row history: plain tables against partitioned ones (PostgreSQL).

What is measured
----------------
Two fresh PostgreSQL databases, one at schema 0009 (plain tables) and one at head (``epoch_metrics``,
``batch_metrics`` and ``events`` hash-partitioned by migration 0010, and ``metric_summaries``,
filled from the loaded rows as migration 0011 does), are loaded with the same
history: ``--runs`` runs (default 2,000, in sweeps of 20 trials) × ``--epochs`` epochs (500) ×
``--metrics`` metrics (10) = 10,000,000 ``epoch_metrics`` rows, plus the ``runs``, ``epochs``,
``params`` and ``sweeps`` rows that go with them (``COPY``, then ``ANALYZE``). Then each query below
runs ``--repeats`` times on a warm cache, alternating between the two databases; the figure is the
median wall time in this process (psycopg through SQLAlchemy, as ``fitstream`` itself runs them):

* **curve**: one run's ``val_loss`` curve — the README's query (500 rows);
* **best 10 (monitored)**: the 10 best runs by their monitored metric, from ``runs.best_value``;
* **best 10 (any metric)**: the README's query over ``epoch_metrics`` for a metric no run monitors
  (``val_accuracy``: the maximum of every run's 500 values, 1,000,000 rows read);
* **best 10 (any metric, summaries)**: the same ranking from ``metric_summaries`` (head only);
* **runs list**: what ``fitstream runs`` runs (``list_runs``, 50 most recent);
* **sweep**: what ``fitstream compare SWEEP`` runs (``sweep_trials``), by the monitored metric and
  by ``val_accuracy`` (each trial's curve read from ``epoch_metrics``).

Target (issue 14): each under 50 ms at 10 M rows. No timing is asserted; the script prints a table.

Run::

    .venv/bin/python benchmarks/history_queries.py                    # 10 M rows, ~5 min
    .venv/bin/python benchmarks/history_queries.py --runs 200         # 1 M rows, a smoke run

100 M rows: ``--runs 20000`` (about 30 GB of disk on PostgreSQL and an hour of loading here).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

METRICS = ("loss", "val_loss", "accuracy", "val_accuracy")


def metric_names(count: int) -> list[str]:
    return [*METRICS, *(f"m{i}" for i in range(count - len(METRICS)))][:count]


def _copy(conn: Any, sql: str, lines: Any) -> None:
    with conn.cursor().copy(sql) as copy:
        buffer = io.StringIO()
        for line in lines:
            buffer.write(line)
            if buffer.tell() > 8 << 20:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())


def load(url: str, args: argparse.Namespace) -> dict[str, float]:
    """Fill the database at ``url``; returns the seconds each table took."""
    import psycopg

    names = metric_names(args.metrics)
    rng = random.Random(7)
    t0 = 1_700_000_000.0
    runs = [f"{i:032x}" for i in range(1, args.runs + 1)]
    sweeps = [f"{i:032x}" for i in range(10**6, 10**6 + max(1, args.runs // 20))]
    spent: dict[str, float] = {}
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        start = time.perf_counter()
        _copy(
            conn,
            "COPY sweeps (id, name, spec, created_at, trials, state) FROM STDIN",
            (
                f"{s}\tsweep-{k}\t{json.dumps({'grid': {'optimizer.learning_rate': [0.1, 0.01]}})}\t"
                f"2024-01-01 00:00:00+00\t20\tfinished\n"
                for k, s in enumerate(sweeps)
            ),
        )
        run_lines, param_lines, epoch_lines = [], [], []
        curves: dict[str, float] = {}
        for i, run in enumerate(runs):
            best = 1.0 + rng.random()
            curves[run] = best
            started = t0 + i * 600
            run_lines.append(
                f"{run}\ttrial-{i}\tcompleted\t{_ts(started)}\t{_ts(started + args.epochs)}\t{args.epochs}\t{args.epochs}\t"
                f"{args.epochs - 1}\tval_loss\tmin\t{best}\t{sweeps[i % len(sweeps)]}\t{_ts(started + args.epochs)}\n"
            )
            param_lines.append(
                f"{run}\toptimizer.learning_rate\t{0.1 if i % 2 else 0.01}\t{0.1 if i % 2 else 0.01}\n"
            )
            param_lines.append(f"{run}\tmodel.kwargs.hidden\t{16 << (i % 3)}\t{16 << (i % 3)}\n")
            epoch_lines.extend(
                f"{run}\t{e}\t0.001\t0.1\t45\t{_ts(started + e)}\n" for e in range(args.epochs)
            )
        _copy(
            conn,
            "COPY runs (run_id, name, status, started_at, finished_at, epochs_completed, epochs_planned, "
            "best_epoch, monitor, mode, best_value, sweep_id, last_event_at) FROM STDIN",
            run_lines,
        )
        _copy(conn, "COPY params (run_id, key, value, value_num) FROM STDIN", param_lines)
        _copy(
            conn,
            "COPY epochs (run_id, epoch, learning_rate, wall_time_s, steps, ended_at) FROM STDIN",
            epoch_lines,
        )
        conn.commit()
        spent["runs, params, epochs, sweeps"] = time.perf_counter() - start
        start = time.perf_counter()

        def metric_lines():  # type: ignore[no-untyped-def]
            for run in runs:
                base = curves[run]
                for name in names:
                    scale = 1.0 if "loss" in name else -0.5
                    yield "".join(
                        f"{name}\t{run}\t{e}\t{base * scale + 5.0 / (e + 1):.6f}\n"
                        for e in range(args.epochs)
                    )

        _copy(conn, "COPY epoch_metrics (name, run_id, epoch, value) FROM STDIN", metric_lines())
        conn.commit()
        spent["epoch_metrics"] = time.perf_counter() - start
        start = time.perf_counter()
        has_summaries = conn.execute("SELECT to_regclass('metric_summaries')").fetchone()[0] is not None
        conn.commit()
        if has_summaries:
            import sqlalchemy as sa

            from pipeline.db.summaries import rebuild

            engine = sa.create_engine(url)
            with engine.begin() as sa_conn:
                rebuild(sa_conn)  # what migration 0011 does to an existing history
            engine.dispose()
            spent["metric_summaries"] = time.perf_counter() - start
            start = time.perf_counter()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        spent["vacuum analyze"] = time.perf_counter() - start
    return spent


def _ts(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(unix))


def queries(args: argparse.Namespace) -> dict[str, Callable[[Any], Any]]:
    import sqlalchemy as sa

    from pipeline.db.experiments import sweep_trials
    from pipeline.db.queries import list_runs

    run = f"{args.runs // 2:032x}"
    sweep = f"{10**6 + min(3, max(1, args.runs // 20) - 1):032x}"

    def sql(text: str) -> Callable[[Any], Any]:
        def run_it(engine: Any) -> Any:
            with engine.connect() as conn:
                return conn.execute(sa.text(text)).all()

        return run_it

    return {
        "curve (one run, 500 points)": sql(
            f"SELECT epoch, value FROM epoch_metrics WHERE run_id = '{run}' AND name = 'val_loss' ORDER BY epoch"
        ),
        "best 10 runs (monitored, runs.best_value)": sql(
            "SELECT name, run_id, best_value FROM runs WHERE monitor = 'val_loss' AND best_value IS NOT NULL "
            "ORDER BY best_value LIMIT 10"
        ),
        "best 10 runs (any metric, epoch_metrics)": sql(
            "SELECT r.name, r.run_id, max(m.value) AS best FROM epoch_metrics m JOIN runs r USING (run_id) "
            "WHERE m.name = 'val_accuracy' GROUP BY r.name, r.run_id ORDER BY best DESC LIMIT 10"
        ),
        "best 10 runs (any metric, metric_summaries)": sql(
            "SELECT r.name, s.run_id, s.max_value AS best FROM metric_summaries s JOIN runs r USING (run_id) "
            "WHERE s.name = 'val_accuracy' AND s.max_value IS NOT NULL ORDER BY s.max_value DESC LIMIT 10"
        ),
        "runs list (fitstream runs)": lambda engine: list_runs(engine, limit=50),
        "sweep comparison (monitored)": lambda engine: sweep_trials(engine, sweep),
        "sweep comparison (--metric val_accuracy)": lambda engine: sweep_trials(
            engine, sweep, metric="val_accuracy"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    if args.metrics < len(METRICS):
        parser.error(f"--metrics must be >= {len(METRICS)}")
    from pipeline.db.migrate import upgrade
    from pipeline.db.session import make_engine

    rows = args.runs * args.epochs * args.metrics
    print(f"history_queries: {_common.machine_line()}")
    print(
        f"{rows:,} epoch_metrics rows = {args.runs:,} runs × {args.epochs} epochs × {args.metrics} metrics; "
        f"{args.repeats} repeats per query, warm cache"
    )
    with _common.postgres_database() as plain_url, _common.postgres_database() as part_url:
        setups = {"plain (0009)": (plain_url, "0009"), "partitioned (head)": (part_url, "head")}
        engines = {}
        for label, (url, revision) in setups.items():
            upgrade(url, revision)
            spent = load(url, args)
            print(
                f"  loaded {label}: "
                + ", ".join(f"{k} {v:.1f}s" for k, v in spent.items())
                + f" ({rows / spent['epoch_metrics']:,.0f} metric rows/s by COPY)",
                flush=True,
            )
            engines[label] = make_engine(url)
        results: dict[str, dict[str, float]] = {}
        for name, query in queries(args).items():
            able = {}
            for label, engine in engines.items():  # warm up: plans, caches
                try:
                    query(engine)
                    able[label] = engine
                except Exception:  # metric_summaries: not in the plain (0009) schema
                    pass
            samples: dict[str, list[float]] = {label: [] for label in able}
            for _ in range(args.repeats):
                for label, engine in able.items():
                    t0 = time.perf_counter()
                    query(engine)
                    samples[label].append((time.perf_counter() - t0) * 1000)
            results[name] = {label: statistics.median(v) for label, v in samples.items()}
        sizes = {}
        for label, engine in engines.items():
            with engine.connect() as conn:
                import sqlalchemy as sa

                sizes[label] = conn.execute(
                    sa.text(
                        "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c "
                        "WHERE c.relkind IN ('r', 'p') AND (c.relname = 'epoch_metrics' OR c.relname LIKE 'epoch\\_metrics\\_p%')"
                    )
                ).scalar()
            engine.dispose()
    labels = list(setups)
    print()
    print(
        _common.table(
            ["query (median ms)", *labels, "partitioned / plain", "< 50 ms"],
            [
                [
                    name,
                    *(f"{r[label]:.2f}" if label in r else "—" for label in labels),
                    f"{r[labels[1]] / r[labels[0]]:.2f}×" if len(r) == 2 else "—",
                    "yes" if max(r.values()) < 50 else "NO",
                ]
                for name, r in results.items()
            ],
        )
    )
    print("epoch_metrics on disk (table + indexes): " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
