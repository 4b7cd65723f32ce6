"""The dashboard under load: a run page with 10 metrics × 100,000 points, and 50 live viewers of one run.

What is measured
----------------
1. **Run page.** A SQLite history holds one run with ``--metrics`` (10) metrics × ``--points``
   (100,000) epochs (1,000,000 ``epoch_metrics`` rows). The real app (``create_app``, served by
   uvicorn in this process) answers ``GET /api/runs/{id}/metrics``: time to first byte and to the
   last byte, median of ``--repeats``. The peer: the same series without downsampling (what a page
   drawing every point would have to fetch). Then Debian's chromium (Playwright) opens
   ``/runs/{id}``: time until every chart is drawn (``body[data-ready]``) — target < 1 s.
2. **Fan-out.** ``--viewers`` (50) clients follow the run's event stream (``/api/runs/{id}/events``,
   one HTTP connection each, as 50 browser tabs would) while ``--events`` (200) ``epoch_end`` events
   are published, 20 a second. Reported: event → viewer latency (publish time to the moment each
   viewer has parsed it) p50 / p99 / max, every event seen by every viewer, and the SQL statements
   the server ran meanwhile (counted by a SQLAlchemy listener: the live path runs none). The peer:
   the same viewers polling ``/api/runs/{id}/metrics`` once a second, as a page without SSE would.

Run::

    .venv/bin/python benchmarks/ui_page.py [--metrics 10] [--points 100000] [--viewers 50] [--events 200]

No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import threading
import time
from pathlib import Path

import _common
import requests
import sqlalchemy as sa

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.config import Settings
from pipeline.db import migrate

RUN = "ab" * 16


def load(db_path: Path, metrics: int, points: int) -> None:
    url = f"sqlite:///{db_path}"
    migrate.upgrade(url)
    conn = sqlite3.connect(db_path)
    conn.execute(
        "INSERT INTO runs (run_id, name, status, epochs_completed, monitor, mode, started_at) "
        "VALUES (?, 'big-run', 'running', ?, 'm0', 'min', CURRENT_TIMESTAMP)",
        (RUN, points),
    )
    rows = (
        (RUN, f"m{m}" if m else "m0", e, 1.0 / (1 + e) + 0.001 * ((e * 7919 + m) % 97))
        for m in range(metrics)
        for e in range(points)
    )
    conn.executemany("INSERT INTO epoch_metrics (run_id, name, epoch, value) VALUES (?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    from pipeline.db.summaries import rebuild  # what the recorder keeps as it writes the epochs

    engine = sa.create_engine(url)
    with engine.begin() as connection:
        rebuild(connection)
    engine.dispose()


class Server:
    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from pipeline.ui.app import create_app

        self.port = _common.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        raise SystemExit("the dashboard did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def timed_get(url: str) -> tuple[float, float, int]:
    """(time to first byte, time to last byte, bytes) of one GET."""
    start = time.perf_counter()
    with requests.get(url, stream=True, timeout=120) as response:
        first = None
        size = 0
        for chunk in response.iter_content(65536):
            if first is None:
                first = time.perf_counter() - start
            size += len(chunk)
    return first or 0.0, time.perf_counter() - start, size


def page_time(url: str) -> float | None:
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url + "/healthz")
        start = time.perf_counter()
        page.goto(f"{url}/runs/{RUN}")
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
        elapsed = time.perf_counter() - start
        browser.close()
    return elapsed


def fan_out(server: Server, settings: Settings, viewers: int, events: int) -> dict[str, float]:
    received: list[list[tuple[int, float]]] = [[] for _ in range(viewers)]
    ready = threading.Barrier(viewers + 1)

    def viewer(i: int) -> None:
        with requests.get(
            f"{server.url}/api/runs/{RUN}/events?after={int(time.time() * 1000)}-0", stream=True, timeout=120
        ) as response:
            ready.wait()
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("type") == "epoch_end":
                        received[i].append((event["epoch"], time.time()))
                        if len(received[i]) == events:
                            return

    threads = [threading.Thread(target=viewer, args=(i,), daemon=True) for i in range(viewers)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(0.5)
    statements = _count_statements()
    stream = EventStream(settings=settings)
    sent: dict[int, float] = {}
    for n in range(events):
        sent[n] = time.time()
        stream.publish(
            [ev.build(ev.EpochEnd, run_id=RUN, seq=10_000_000 + n, epoch=1_000_000 + n, metrics={"m0": 0.5})]
        )
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=30)
    sql_during = _count_statements() - statements
    latencies = [(t - sent[epoch - 1_000_000]) * 1000 for got in received for epoch, t in got]
    latencies.sort()
    complete = sum(1 for got in received if [e for e, _ in got] == [1_000_000 + n for n in range(events)])
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[int(0.99 * (len(latencies) - 1))],
        "max": latencies[-1],
        "complete": complete,
        "sql": sql_during,
    }


_STATEMENTS = [0]


def _count_statements() -> int:
    return _STATEMENTS[0]


def polling_peer(server: Server, viewers: int, seconds: float) -> int:
    """SQL statements run while ``viewers`` poll the metrics once a second for ``seconds``."""
    before = _count_statements()
    stop = time.monotonic() + seconds

    def poll() -> None:
        while time.monotonic() < stop:
            requests.get(f"{server.url}/api/runs/{RUN}/metrics?limit=100", timeout=60)
            time.sleep(1.0)

    threads = [threading.Thread(target=poll) for _ in range(viewers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _count_statements() - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    sa.event.listen(
        sa.engine.Engine,
        "before_cursor_execute",
        lambda *a, **k: _STATEMENTS.__setitem__(0, _STATEMENTS[0] + 1),
    )
    with _common.temp_dir() as tmp:
        db = tmp / "history.db"
        started = time.perf_counter()
        load(db, args.metrics, args.points)
        print(
            f"loaded {args.metrics * args.points:,} epoch_metrics rows in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        stream_name = _common.unique_stream()
        settings = Settings(
            redis_url=_common.REDIS_URL, database_url=f"sqlite:///{db}", stream=stream_name, home=tmp / "home"
        )
        server = Server(settings)
        try:
            down = [timed_get(f"{server.url}/api/runs/{RUN}/metrics") for _ in range(args.repeats)]
            raw = [
                timed_get(f"{server.url}/api/runs/{RUN}/metrics?limit=100000000")
                for _ in range(max(1, args.repeats // 2))
            ]
            drawn = [t for t in (page_time(server.url) for _ in range(3)) if t is not None]
            fan = fan_out(server, settings, args.viewers, args.events)
            polled = polling_peer(server, args.viewers, seconds=5)
        finally:
            server.stop()
            _common.delete_stream_keys(_common.REDIS_URL, stream_name)
    med = lambda values, i: statistics.median(v[i] for v in values)  # noqa: E731
    lines = [
        f"# Dashboard ({time.strftime('%Y-%m-%d')})",
        "",
        _common.machine_line(),
        "",
        f"One run, {args.metrics} metrics × {args.points:,} epochs in SQLite; the app served by uvicorn in this process.",
        "",
        "```",
        _common.table(
            ["GET /api/runs/{id}/metrics", "first byte", "last byte", "size"],
            [
                [
                    "downsampled (2,000 points a metric)",
                    f"{med(down, 0) * 1000:.0f} ms",
                    f"{med(down, 1) * 1000:.0f} ms",
                    f"{down[0][2] / 1e3:,.0f} kB",
                ],
                [
                    "peer: every point",
                    f"{med(raw, 0) * 1000:.0f} ms",
                    f"{med(raw, 1) * 1000:.0f} ms",
                    f"{raw[0][2] / 1e6:,.1f} MB",
                ],
            ],
        ),
        "```",
        "",
        "Run page fully drawn in chromium (navigation → every chart drawn): "
        + (
            f"median {statistics.median(drawn) * 1000:.0f} ms of {len(drawn)}"
            if drawn
            else "chromium not installed"
        ),
        "",
        f"Fan-out: {args.viewers} viewers of one run's event stream, {args.events} epoch_end events at 20/s:",
        "",
        "```",
        _common.table(
            ["", "live (SSE from Redis)", f"peer: {args.viewers} viewers polling SQL once a second"],
            [
                [
                    "event → viewer p50 / p99 / max",
                    f"{fan['p50']:.0f} / {fan['p99']:.0f} / {fan['max']:.0f} ms",
                    "up to 1,000 ms (the poll period)",
                ],
                ["viewers that saw every event, in order", f"{fan['complete']} / {args.viewers}", "—"],
                ["SQL statements while it ran", f"{fan['sql']:,}", f"{polled:,} in 5 s"],
            ],
        ),
        "```",
    ]
    text = "\n".join(lines)
    _common.emit_report(text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
