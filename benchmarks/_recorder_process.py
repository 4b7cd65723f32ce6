"""A real ``fitstream consume recorder`` process, started and stopped by ``vs_mlflow.py``.

Not a benchmark itself. Both halves of ``vs_mlflow.py`` (the fit overhead and the ingest) run the
recorder as users do, in its own process with its default settings, so that its cost is measured
as it is paid: on the same machine, competing for its cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _common


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
