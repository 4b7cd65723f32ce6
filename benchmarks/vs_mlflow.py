"""Fitstream and MLflow side by side: fit overhead and ingest, in the same rounds, on this machine.

Needs MLflow (``pip install -e ".[bench]"``: an optional extra, never a runtime dependency), Redis
and, for the PostgreSQL rows, ``FITSTREAM_TEST_POSTGRES_URL`` (a user that may CREATE DATABASE).

What is measured
----------------
**Fit overhead.** The digits MLP of ``examples/digits.py`` (hidden 64, Adam; 1,437 training and 360
validation samples, batch 32: 45 batches per epoch) is fitted ``--epochs`` epochs in five modes,
alternating in every round (the order rotates each round, so drift cancels out):

* ``baseline``: no tracking callback;
* ``fitstream epoch``: ``EventPublisher`` with its defaults, while a real ``fitstream consume
  recorder`` process writes the events to SQLite (the same machine, competing for its cores);
* ``mlflow epoch``: ``mlflow.keras.MlflowCallback()`` (what ``mlflow.keras.autolog()`` adds), in
  an active run, tracking into SQLite (``sqlite:///…/mlflow.db``);
* ``fitstream batch``: ``EventPublisher(batch_events_every=1)``: every batch's logs also go to
  ``batch_metrics``;
* ``mlflow batch``: ``MlflowCallback(log_every_epoch=False, log_every_n_steps=1)``: every step's logs.

Per mode: the median epoch time (epoch 0 with graph tracing excluded) and its overhead against the
baseline of the same round (paired, median over rounds), and the time spent inside the tool's Keras
hooks on the training thread per epoch (each hook an instance is called through, wrapped in two
``perf_counter`` calls): the tool's direct cost, steadier than wall time on a shared 2-core VM.

**Ingest.** ``--runs`` runs × ``--events`` epoch events × ``--metrics`` metrics (default 100 × 200
× 10 = 200,000 metric rows), per database (SQLite file, PostgreSQL database), each in a fresh
database, alternating in every round:

* ``fitstream recorder``: a real ``fitstream consume recorder`` process with its default settings
  is started and idle; the events are then published (pipelined, 1,000 per round trip); rows/s =
  metric rows / (first XADD → the group has nothing pending or unread: every batch committed);
* ``mlflow log_batch``: ``MlflowClient.log_batch`` with 1,000 metrics per call (MLflow's maximum);
* ``mlflow log_metric``: one ``MlflowClient.log_metric`` per row, on ``--log-metric-rows`` rows;
* ``fitstream ×N recorders`` (PostgreSQL, ``--scale``): N recorder processes in one group;
* ``ceiling``: the database itself taking the same rows into a table with the same key —
  PostgreSQL ``COPY``, SQLite ``executemany`` of keyed ``INSERT``s in one transaction.

Output: the tables below on stdout, and ``benchmarks/results/vs_mlflow-<date>.md`` and ``.json``.
No timing is asserted anywhere.

Run::

    .venv/bin/python benchmarks/vs_mlflow.py [--rounds 3] [--epochs 6] [--events 200] [--runs 100] \\
        [--metrics 10] [--backends sqlite,postgresql] [--skip-fit] [--skip-ingest]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import _workloads

FIT_MODES = ("baseline", "fitstream epoch", "mlflow epoch", "fitstream batch", "mlflow batch")
RESULTS = Path(__file__).resolve().parent / "results"


# -- helpers -----------------------------------------------------------------------------------------
def start_recorder(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``fitstream consume recorder`` with its default settings, ready (its group exists) on return."""
    handle = open(log, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "consume", "recorder"],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while b"consuming" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the recorder did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


def bench_env(database_url: str, stream: str, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FITSTREAM_REDIS_URL": _common.REDIS_URL,
        "FITSTREAM_DATABASE_URL": database_url,
        "FITSTREAM_STREAM": stream,
        "FITSTREAM_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(p for p in (str(_common.REPO), os.environ.get("PYTHONPATH", "")) if p),
    }


def databases(backends: list[str], scratch: Path) -> Iterator[tuple[str, str]]:
    """(backend, URL) of a fresh, empty database per call."""
    for backend in backends:
        if backend == "sqlite":
            yield backend, f"sqlite:///{scratch / f'{uuid.uuid4().hex[:8]}.db'}"
        else:
            with _common.postgres_database() as url:
                yield backend, url


# -- fit overhead ----------------------------------------------------------------------------------------
def one_fit(
    mode: str, workload: _workloads.Workload, epochs: int, settings: Any, mlflow_uri: str, experiment_id: str
) -> dict[str, Any]:
    import keras
    import mlflow

    from pipeline import EventPublisher

    (x, y), (x_val, y_val) = workload.data
    batch_size = workload.batch_size
    keras.backend.clear_session()
    gc.collect()
    model = workload.build_model()
    stamps: list[float] = []

    class EpochClock(keras.callbacks.Callback):  # no batch hooks
        def on_epoch_begin(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            stamps.append(time.perf_counter())

        def on_train_end(self, logs=None):  # type: ignore[no-untyped-def]
            stamps.append(time.perf_counter())

    spent: dict[str, float] = {}
    callbacks: list[Any] = [EpochClock()]
    run = None
    if mode.startswith("fitstream"):
        tracker = EventPublisher(
            name="bench",
            settings=settings,
            batch_size=batch_size,
            batch_events_every=1 if mode.endswith("batch") else None,
        )
        _common.time_hooks(tracker, spent)
        callbacks.append(tracker)
    elif mode.startswith("mlflow"):
        mlflow.set_tracking_uri(mlflow_uri)
        run = mlflow.start_run(experiment_id=experiment_id)
        every_step = mode.endswith("batch")
        tracker = mlflow.keras.MlflowCallback(
            log_every_epoch=not every_step, log_every_n_steps=1 if every_step else None
        )
        _common.time_hooks(tracker, spent)
        callbacks.append(tracker)
    t0 = time.perf_counter()
    try:
        model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=batch_size,
            verbose=0,
            callbacks=callbacks,
        )
    finally:
        if run is not None:
            mlflow.end_run()
    wall = time.perf_counter() - t0
    intervals = [b - a for a, b in zip(stamps, stamps[1:])][1:]  # epoch 0 traces the graph
    return {
        "mode": mode,
        "epoch_s": _common.median(intervals),
        "fit_s": wall,
        "hooks_per_epoch_s": sum(spent.values()) / epochs,
        "hooks": spent,
    }


def fit_overhead(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import mlflow

    from pipeline.config import Settings

    workload = _workloads.get(args.workload)
    print(
        f"  fit: {workload.description}, batch {workload.batch_size}; {_workloads.accelerator_line()}",
        file=sys.stderr,
    )
    stream = _common.unique_stream()
    database = f"sqlite:///{scratch / 'fit-history.db'}"
    from pipeline.db.migrate import upgrade

    upgrade(database)
    settings = Settings(
        redis_url=_common.REDIS_URL, database_url=database, stream=stream, home=scratch / "home"
    )
    mlflow_uri = f"sqlite:///{scratch / 'mlflow.db'}"
    # MlflowCallback logs the model summary as an artifact: keep it in the scratch folder, not ./mlruns.
    mlflow.set_tracking_uri(mlflow_uri)
    experiment_id = mlflow.create_experiment(
        "fit-overhead", artifact_location=(scratch / "mlartifacts").as_uri()
    )
    recorder = start_recorder(bench_env(database, stream, scratch / "home"), scratch / "fit-recorder.log")
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for mode in FIT_MODES:  # warm-up: graph tracing, MLflow's schema, Redis connections
            one_fit(mode, workload, 2, settings, mlflow_uri, experiment_id)
        for r in range(args.rounds):
            order = FIT_MODES[r % len(FIT_MODES) :] + FIT_MODES[: r % len(FIT_MODES)]
            rounds.append(
                {
                    mode: one_fit(mode, workload, args.epochs, settings, mlflow_uri, experiment_id)
                    for mode in order
                }
            )
            print(f"  fit round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        stop(recorder)
        _common.delete_stream_keys(_common.REDIS_URL, stream)
    summary = {}
    for mode in FIT_MODES:
        epoch = _common.median([rnd[mode]["epoch_s"] for rnd in rounds])
        paired = _common.median([rnd[mode]["epoch_s"] / rnd["baseline"]["epoch_s"] - 1 for rnd in rounds])
        hooks = _common.median([rnd[mode]["hooks_per_epoch_s"] for rnd in rounds])
        base = _common.median([rnd["baseline"]["epoch_s"] for rnd in rounds])
        summary[mode] = {
            "epoch_ms": epoch * 1000,
            "overhead_pct": paired * 100,
            "hooks_ms_per_epoch": hooks * 1000,
            "hooks_pct_of_baseline_epoch": hooks / base * 100,
        }
    return {
        "rounds": args.rounds,
        "epochs": args.epochs,
        "batches_per_epoch": workload.steps_per_epoch,
        "workload": workload.description,
        "batch_size": workload.batch_size,
        "accelerator": _workloads.accelerator_line(),
        "modes": summary,
    }


# -- ingest -------------------------------------------------------------------------------------------------
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


# -- report ---------------------------------------------------------------------------------------------------
def report(fit: dict[str, Any] | None, ing: dict[str, Any] | None) -> str:
    lines = [
        f"# Fitstream vs MLflow — {dt.date.today().isoformat()}",
        "",
        f"Machine: {_common.machine_line()}",
        "",
    ]
    import mlflow

    lines.append(f"MLflow {mlflow.__version__}; same process, same data, alternating in every round.")
    lines.append("")
    if fit is not None:
        lines += [
            f"## Fit overhead ({fit['epochs']} epochs × {fit['batches_per_epoch']} batches, {fit['rounds']} rounds; "
            "median epoch, paired overhead against the same round's baseline)",
            "",
            f"Model: {fit.get('workload', 'digits MLP')}, batch {fit.get('batch_size', 32)}. "
            f"{fit.get('accelerator', '')}",
            "",
            "| mode | epoch ms | overhead | in its hooks, ms/epoch | hooks / baseline epoch |",
            "|---|---|---|---|---|",
        ]
        for mode, m in fit["modes"].items():
            lines.append(
                f"| {mode} | {m['epoch_ms']:.1f} | {m['overhead_pct']:+.1f} % | {m['hooks_ms_per_epoch']:.2f} | "
                f"{m['hooks_pct_of_baseline_epoch']:.2f} % |"
            )
        lines.append("")
    if ing is not None:
        lines += [
            f"## Ingest ({ing['rows']:,} metric rows = {ing['runs']} runs × {ing['rows'] // ing['runs'] // ing['metrics']} "
            f"epochs × {ing['metrics']} metrics; log_metric on {ing['log_metric_rows']:,} rows; median rows/s)",
            "",
        ]
        backends = list(ing["rows_per_s"])
        lines += ["| peer | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
        for name in next(iter(ing["rows_per_s"].values())):
            cells = []
            for backend in backends:
                value = ing["rows_per_s"][backend][name]
                ceiling = ing["rows_per_s"][backend]["ceiling"]
                cells.append("—" if value != value else f"{value:,.0f} ({value / ceiling:.2f}× ceiling)")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        for backend in backends:
            fs, mb = (
                ing["rows_per_s"][backend]["fitstream recorder"],
                ing["rows_per_s"][backend]["mlflow log_batch"],
            )
            lines.append(
                f"- {backend}: Fitstream's recorder takes {fs / mb:.1f}× the rows/s of MLflow's log_batch."
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--events", type=int, default=200, help="epoch events per run (ingest)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--log-metric-rows", type=int, default=2000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--scale", default="1,2,4", help="recorders in one group, side by side (PostgreSQL rows only)"
    )
    parser.add_argument(
        "--workload",
        choices=sorted(_workloads.WORKLOADS),
        default="digits",
        help="the fitted model: digits (CPU default) or convnet (big enough to keep a GPU busy)",
    )
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="where to write the .md and .json (default benchmarks/results/vs_mlflow-<date>)",
    )
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.scale = [int(n) for n in args.scale.split(",") if n.strip()]
    if importlib.util.find_spec("mlflow") is None:
        print('MLflow is not installed: pip install -e ".[bench]"', file=sys.stderr)
        return 2
    with _common.temp_dir() as scratch:
        fit = None if args.skip_fit else fit_overhead(args, scratch)
        ing = None if args.skip_ingest else ingest(args, scratch)
    text = report(fit, ing)
    print(text)
    stamp = dt.date.today().isoformat()
    base = args.results or RESULTS / f"vs_mlflow-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".md").write_text(text)
    base.with_suffix(".json").write_text(
        json.dumps(
            {
                "date": stamp,
                "machine": _common.machine_line(),
                "fit": fit,
                "ingest": None if ing is None else dict(ing.items()),
            },
            indent=2,
        )
    )
    print(f"written: {base.with_suffix('.md')} and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
