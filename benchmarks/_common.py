"""Helpers shared by the benchmark scripts: unique streams, throwaway databases, tables, RSS.

Not a benchmark itself. Every script imports it as ``_common`` (the scripts'
own folder is first on ``sys.path`` when they run as ``python benchmarks/x.py``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # works without an editable install too
    sys.path.insert(0, str(REPO))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REDIS_URL = os.environ.get("FITSTREAM_REDIS_URL", "redis://localhost:6379/0")
POSTGRES_URL = os.environ.get(
    "FITSTREAM_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/test"
)


def unique_stream() -> str:
    return f"fitstream:bench:{uuid.uuid4().hex[:12]}"


def delete_stream_keys(redis_url: str, stream: str) -> int:
    """Delete the stream and every key derived from it (dead letters, counters)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = [
        stream.encode(),
        *client.scan_iter(match=f"{stream}:*"),
        *client.scan_iter(match=f"{{{stream}:*"),
    ]  # shards: {stream:N}
    deleted = int(client.delete(*keys)) if keys else 0
    client.close()
    return deleted


@contextlib.contextmanager
def temp_dir(prefix: str = "fitstream-bench-") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def _admin_conninfo() -> str:
    """The admin URL as libpq understands it (no SQLAlchemy driver suffix)."""
    url = POSTGRES_URL
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database (``fitstream_bench_<hex>``), dropped WITH (FORCE) on exit.

    Yields its SQLAlchemy URL (``postgresql+psycopg://...``).
    """
    import psycopg
    import sqlalchemy as sa

    admin = _admin_conninfo()
    name = f"fitstream_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = sa.engine.make_url(admin).set(drivername="postgresql+psycopg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rss_kib() -> dict[str, int]:
    """VmRSS / VmHWM (peak) of this process in KiB, from /proc/self/status."""
    values: dict[str, int] = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, align: str | None = None) -> str:
    """A plain-text table. ``align``: one 'l' or 'r' per column (default: first left, rest right)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(cells[0]), rule, *(fmt(r) for r in cells[1:])])


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def emit_report(text: str, results: Path | None) -> None:
    """Print a benchmark's report, and write it to ``results`` (Markdown) when given."""
    print(text)
    if results:
        results.write_text(text + "\n")


def machine_line() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    return f"{platform.node()} | {os.cpu_count()} CPUs ({cpu}) | Python {platform.python_version()}"


@contextlib.contextmanager
def running_worker(queue: str, env: dict[str, str], log_path: Path) -> Iterator[None]:
    """A real ``fitstream worker`` on ``queue`` (its own process group, output in ``log_path``),
    stopped with SIGTERM when the block ends."""
    import signal
    import subprocess

    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli.main",
                "worker",
                "-Q",
                queue,
                "-n",
                f"{queue}@bench",
                "--loglevel",
                os.environ.get("FITSTREAM_BENCH_WORKER_LOGLEVEL", "WARNING"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)


#: Keras hooks (and the publisher's one-shot learning-rate read) that ``time_hooks`` times.
TIMED_HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_batch_end",
    "on_test_end",
    "on_epoch_end",
    "on_train_end",
    "_read_epoch_learning_rate",
)


def time_hooks(callback: Any, spent: dict[str, float]) -> None:
    """Wrap each Keras hook this callback instance is really called through (Keras' default no-ops
    are skipped, so that timing changes nothing Keras decides about batch hooks) to add its time,
    on the training thread, to ``spent``."""
    import time

    from keras.src.utils import is_default

    for name in TIMED_HOOKS:
        method = getattr(callback, name, None)
        if method is None or is_default(method):
            continue

        def timed(*args: Any, _method: Callable = method, _name: str = name, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t0

        setattr(callback, name, timed)
