"""Fault 1: the recorder is SIGKILLed five times while 20 runs publish 20,000 events; every event
ends up in SQL exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from pipeline.bus import EventStream
from tests.conftest import REPO, settings_env, wait_for
from tests.faults.conftest import count_recorded
from tests.stream_helpers import RECORDED_EVENT_COUNT, epoch_events

pytestmark = pytest.mark.slow

RUNS, EPOCHS, KILLS = 20, 999, 5  # 20 × (run_started + 999 epochs + run_finished) = 20,020 events


def start_recorder(settings, name: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "consume",
            "recorder",
            "--name",
            name,
            "--claim-idle-ms",
            "300",
            *extra,
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def recorded_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(RECORDED_EVENT_COUNT)).scalar()


def interleaved(items_by_run: list[list]) -> list:
    """The runs' events as 20 concurrent runs would publish them: each run in order, runs mixed."""
    out = []
    for position in range(max(len(items) for items in items_by_run)):
        out.extend(items[position] for items in items_by_run if position < len(items))
    return out


def test_recorder_sigkilled_five_times_during_20000_events_records_each_once(
    settings, engine, ledger, database_url
):
    every = epoch_events(RUNS, EPOCHS, 4)
    per_run = [every[r * (EPOCHS + 2) : (r + 1) * (EPOCHS + 2)] for r in range(RUNS)]
    items = interleaved(per_run)
    assert len(items) == 20_020
    stream = EventStream(settings=settings)
    stream.ensure_group("recorder")

    done_publishing = threading.Event()

    def publish() -> None:  # steadily, over about ten seconds, while the recorder is being killed
        for start in range(0, len(items), 500):
            stream.publish(items[start : start + 500])
            time.sleep(0.25)
        done_publishing.set()

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()

    kills_landed_at = []
    for kill in range(KILLS):
        recorder = start_recorder(settings, f"doomed-{kill}", "--batch-size", "200")
        target = (kill + 1) * len(items) // (KILLS + 1)  # kills spread over the whole stream
        wait_for(
            lambda: recorded_count(engine) >= target,
            timeout=90,
            interval=0.02,
            message=f"{target} rows before kill {kill + 1}",
        )
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(timeout=10)
        kills_landed_at.append(recorded_count(engine))
    assert kills_landed_at[-1] < len(items), f"every kill should land mid-stream: {kills_landed_at}"

    publisher.join(timeout=120)
    assert done_publishing.is_set()
    survivor = start_recorder(settings, "survivor", "--exit-when-idle", "3")
    _out, err = survivor.communicate(timeout=240)
    assert survivor.returncode == 0, err

    row = count_recorded(
        engine,
        stream,
        f"1. recorder SIGKILLed 5× in 20,000 events ({database_url.split(':')[0].split('+')[0]})",
        (e.id for e in items),
        note=f"kills after {kills_landed_at} rows",
    )
    ledger.append(row)
    assert (row.published, row.recorded, row.lost, row.duplicated, row.dead_lettered) == (
        20_020,
        20_020,
        0,
        0,
        0,
    )
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM epoch_metrics")).scalar() == RUNS * EPOCHS * 4
        assert conn.execute(sa.text("SELECT status, count(*) FROM runs GROUP BY status")).all() == [
            ("completed", RUNS)
        ]
        assert set(conn.execute(sa.text("SELECT epochs_completed FROM runs")).scalars()) == {EPOCHS}
    assert stream.client.xpending(settings.stream, "recorder")["pending"] == 0
