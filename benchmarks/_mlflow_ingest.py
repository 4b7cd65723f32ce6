"""``vs_mlflow.py``'s ingest: the same metric rows into Fitstream's recorder, MLflow and the database.

Not a benchmark itself. ``ingest`` builds the rows once (``make_rows``) and hands them, round by
round in rotating order, to every peer, each on a fresh database: ``fitstream consume recorder``
(one or several processes), ``MlflowClient.log_batch`` and ``log_metric``, and the database's own
bulk path (``ingest_ceiling``). It returns the median rows/s per backend and peer.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _common
from _recorder_process import bench_env, start_recorder, stop


def databases(backends: list[str], scratch: Path) -> Iterator[tuple[str, str]]:
    """(backend, URL) of a fresh, empty database per call."""
    for backend in backends:
        if backend == "sqlite":
            yield backend, f"sqlite:///{scratch / f'{uuid.uuid4().hex[:8]}.db'}"
        else:
            with _common.postgres_database() as url:
                yield backend, url


def make_rows(
    args: argparse.Namespace, seed: int
) -> tuple[list[dict[str, str]], list[tuple[str, str, int, float]]]:
    """The same data for every peer: encoded epoch_end events and their (run, metric, epoch, value) rows."""
    from pipeline import events as ev

    rng = random.Random(seed)
    run_ids = [uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(args.runs)]
    names = ["loss", "accuracy", "val_loss", "val_accuracy"] + [f"metric_{i}" for i in range(4, args.metrics)]
    names = names[: args.metrics]
    encoded, rows = [], []
    for epoch in range(args.events):
        for r, run_id in enumerate(run_ids):
            metrics = {name: rng.random() for name in names}
            encoded.append(
                ev.encode(
                    ev.EpochEnd(
                        id=uuid.UUID(int=rng.getrandbits(128)).hex,
                        run_id=run_id,
                        seq=epoch + 1,
                        ts=1.7e9 + epoch * 10 + r,
                        epoch=epoch,
                        metrics=metrics,
                        learning_rate=1e-3,
                        wall_time_s=0.2,
                        steps=45,
                        samples_per_second=7000.0,
                        steps_per_second=220.0,
                    )
                )
            )
            rows += [(run_id, name, epoch, value) for name, value in metrics.items()]
    return encoded, rows


def ingest_fitstream(
    url: str, encoded: list[dict[str, str]], n_rows: int, scratch: Path, recorders: int = 1
) -> float:
    from pipeline.bus import EventStream
    from pipeline.config import Settings
    from pipeline.db.migrate import upgrade

    upgrade(url)
    stream = _common.unique_stream()
    started = [
        start_recorder(bench_env(url, stream, scratch / "home"), scratch / f"recorder-{stream[-6:]}-{i}.log")
        for i in range(recorders)
    ]
    bus = EventStream(settings=Settings(redis_url=_common.REDIS_URL, stream=stream))
    try:
        t0 = time.perf_counter()
        for i in range(0, len(encoded), 1000):
            bus.publish(encoded[i : i + 1000])
        while True:
            groups = bus.groups()
            if (
                groups
                and groups[0]["pending"] == 0
                and groups[0]["lag"] == 0
                and groups[0]["entries-read"] == len(encoded)
            ):
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - t0
    finally:
        for recorder in started:
            stop(recorder)
        _common.delete_stream_keys(_common.REDIS_URL, stream)
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT count(*) FROM epoch_metrics").scalar()
    engine.dispose()
    if stored != n_rows:
        raise RuntimeError(f"the recorder stored {stored} metric rows, expected {n_rows}")
    return n_rows / seconds


def mlflow_client(url: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url)


def ingest_mlflow_batch(url: str, rows: list[tuple[str, str, int, float]]) -> float:
    from mlflow.entities import Metric

    client = mlflow_client(url)
    experiment = client.create_experiment(f"bench-{uuid.uuid4().hex[:8]}")
    runs = {run_id: client.create_run(experiment).info.run_id for run_id in dict.fromkeys(r[0] for r in rows)}
    by_run: dict[str, list[Any]] = {}
    for run_id, name, epoch, value in rows:
        by_run.setdefault(run_id, []).append(Metric(name, value, 1_700_000_000_000 + epoch, epoch))
    t0 = time.perf_counter()
    for run_id, metrics in by_run.items():
        for i in range(0, len(metrics), 1000):
            client.log_batch(runs[run_id], metrics=metrics[i : i + 1000])
    return len(rows) / (time.perf_counter() - t0)


def ingest_mlflow_metric(url: str, rows: list[tuple[str, str, int, float]]) -> float:
    client = mlflow_client(url)
    experiment = client.create_experiment(f"bench-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment).info.run_id
    t0 = time.perf_counter()
    for _run_id, name, epoch, value in rows:
        client.log_metric(run, name, value, timestamp=1_700_000_000_000 + epoch, step=epoch)
    return len(rows) / (time.perf_counter() - t0)


def ingest_ceiling(url: str, rows: list[tuple[str, str, int, float]]) -> float:
    """The database's own speed for the same rows into a table keyed like ``epoch_metrics``."""
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute(
            "CREATE TABLE ceiling (name TEXT, run_id TEXT, epoch INTEGER, value REAL, "
            "PRIMARY KEY (name, run_id, epoch)) WITHOUT ROWID"
        )
        t0 = time.perf_counter()
        with conn:
            conn.executemany("INSERT INTO ceiling (run_id, name, epoch, value) VALUES (?, ?, ?, ?)", rows)
        seconds = time.perf_counter() - t0
        conn.close()
        return len(rows) / seconds
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute(
            "CREATE TABLE ceiling (name varchar(255), run_id varchar(64), epoch integer, value float8, "
            "PRIMARY KEY (name, run_id, epoch))"
        )
        conn.commit()
        t0 = time.perf_counter()
        with (
            conn.cursor() as cursor,
            cursor.copy("COPY ceiling (run_id, name, epoch, value) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return len(rows) / (time.perf_counter() - t0)


def ingest(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    encoded, rows = make_rows(args, seed=7)
    sample = rows[: args.log_metric_rows]
    peers: dict[str, Callable[[str], float]] = {
        "fitstream recorder": lambda url: ingest_fitstream(url, encoded, len(rows), scratch),
        "mlflow log_batch": lambda url: ingest_mlflow_batch(url, rows),
        "mlflow log_metric": lambda url: ingest_mlflow_metric(url, sample),
        "ceiling": lambda url: ingest_ceiling(url, rows),
    }
    for count in args.scale:
        if count != 1 and "postgresql" in args.backends:
            peers[f"fitstream ×{count} recorders"] = lambda url, count=count: (
                ingest_fitstream(url, encoded, len(rows), scratch, recorders=count)
                if url.startswith("postgresql")
                else float("nan")
            )
    results: dict[str, dict[str, list[float]]] = {}
    names = list(peers)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for backend, url in databases(args.backends, scratch):
                results.setdefault(backend, {}).setdefault(name, []).append(peers[name](url))
        print(f"  ingest round {r + 1}/{args.rounds} done", file=sys.stderr)
    return {
        "rows": len(rows),
        "log_metric_rows": len(sample),
        "runs": args.runs,
        "metrics": args.metrics,
        "rows_per_s": {
            backend: {name: _common.median(v) for name, v in by.items()} for backend, by in results.items()
        },
        "all": results,
    }
