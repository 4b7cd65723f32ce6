"""The ordered groups' leader SIGKILLed with a batch in its hands (issue 11): two real alerter
processes (and two real promoter processes) share a group; the leader reads a batch, is blocked
writing it (the test holds the database's write lock), and is SIGKILLed. The standby takes the lead
once the lease (FITSTREAM_LEADER_TTL_SECONDS) runs out, handles the dead leader's unfinished batch
first, and every incident is alerted once, in order (every run promoted once).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from pipeline.bus import EventStream
from pipeline.consumers.base import leader_key
from pipeline.model_registry import list_versions
from tests.conftest import REPO, settings_env, wait_for
from tests.faults.conftest import FaultRow
from tests.test_alerts_delivery import _alert_rows, _environ, _rules_data, _run_events
from tests.test_promotion import _keras_file, _publish_run
from tests.test_worker_promises import tensorflow_mapped

pytestmark = pytest.mark.slow
LEADER_TTL_S = 2.0


@contextlib.contextmanager
def writes_blocked(engine: sa.Engine, tables: tuple[str, ...]) -> Iterator[None]:
    """Hold the database's write lock (SQLite: the file; PostgreSQL: the consumer's tables)."""
    if engine.dialect.name == "sqlite":
        locker = sqlite3.connect(engine.url.database, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            locker.execute("ROLLBACK")
            locker.close()
    else:
        with engine.connect() as conn:
            transaction = conn.begin()
            conn.exec_driver_sql(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
            try:
                yield
            finally:
                transaction.rollback()


class Pair:
    """Two real `fitstream consume KIND` processes in one group."""

    def __init__(self, kind: str, env: dict[str, str], logs: Path) -> None:
        self.kind, self.env, self.logs = kind, env, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "consume", self.kind, "--name", name],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def kill_the_leader_mid_batch(
    stream: EventStream, group: str, pair: Pair, engine: sa.Engine, tables: tuple[str, ...], publish_rest
) -> tuple[str, str, int, float]:  # type: ignore[no-untyped-def]
    """Block writes, publish, wait until the leader holds a batch, SIGKILL it, let writes through.
    Returns (dead leader, survivor, messages the dead leader held, seconds until the survivor led)."""
    key = leader_key(stream.stream, group)
    leader = wait_for(lambda: (holder := stream.client.get(key)) and holder.decode(), message="a leader")
    survivor = next(name for name in pair.procs if name != leader)
    with writes_blocked(engine, tables):
        publish_rest()
        held = wait_for(
            lambda: stream.client.xpending_range(stream.stream, group, "-", "+", 10_000, consumername=leader),
            timeout=60,
            interval=0.05,
            message="the leader holding a batch it cannot write",
        )
        pair.procs[leader].send_signal(signal.SIGKILL)
        pair.procs[leader].wait(timeout=10)
        killed_at = time.monotonic()
    wait_for(
        lambda: stream.client.get(key) == survivor.encode(),
        timeout=LEADER_TTL_S * 10,
        interval=0.05,
        message="the standby to lead",
    )
    took = time.monotonic() - killed_at
    # The lease lapses at most one TTL after the kill; the standby tries at its next poll.
    assert took <= 2 * LEADER_TTL_S + 1, (
        f"the standby led {took:.1f} s after the kill; the lease is {LEADER_TTL_S} s"
    )
    return leader, survivor, len(held), took


def consumer_env(settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **settings_env(settings),
        "FITSTREAM_LEADER_TTL_SECONDS": str(LEADER_TTL_S),
        "FITSTREAM_CLAIM_IDLE_MS": "500",
        **extra,
    }


def test_a_sigkilled_alerter_leader_is_replaced_and_its_batch_alerted_once_in_order(
    settings, engine, slack, hook, tmp_path, ledger
):
    if engine.dialect.name == "sqlite":
        pytest.skip(
            "the lease lives in Redis; checked once, on PostgreSQL (the promoter's takeover on SQLite)"
        )
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(_rules_data()))
    pair = Pair(
        "alerter",
        consumer_env(settings, **_environ(slack, hook), FITSTREAM_ALERT_RULES=str(rules_path)),
        tmp_path,
    )
    stream = EventStream(settings=settings)
    stream.ensure_group("alerter")
    values = [0.4, 0.6, 0.7, 0.8, 0.9, 0.3, 0.2]  # fires at epoch 2, resolves at epoch 5
    runs = [f"lead-{i:02d}" for i in range(20)]
    by_run = {run_id: _run_events(run_id, f"digits-{run_id}", values) for run_id in runs}
    steps = [[by_run[run_id][step] for run_id in runs] for step in range(len(values) + 1)]
    for step in steps[:3]:
        stream.publish(step)
    try:
        pair.start("a1")
        pair.start("a2")
        wait_for(
            lambda: (g := stream.groups()[0])["lag"] == 0 and g["pending"] == 0,
            timeout=60,
            message="the first steps handled",
        )

        def publish_rest() -> None:
            for step in steps[3:]:
                stream.publish(step)

        dead, survivor, held, took = kill_the_leader_mid_batch(
            stream, "alerter", pair, engine, ("alerts", "alert_state", "alert_runs"), publish_rest
        )
        wait_for(
            lambda: (g := stream.groups()[0])["lag"] == 0 and g["pending"] == 0,
            timeout=60,
            message="everything handled",
        )
        wait_for(lambda: len(slack.accepted) == 40, timeout=60, message="40 alerts delivered")
    finally:
        pair.stop()
    assert "took the lead of group alerter and handled" in pair.log(survivor), pair.log(survivor)[-2000:]
    rows = [r for r in _alert_rows(engine) if r.rule == "val-loss-high"]
    for run_id in runs:
        mine = [(r.state, json.loads(r.message)["epoch"]) for r in rows if r.run_id == run_id]
        assert mine == [("firing", 2), ("resolved", 5)], f"{run_id}: {mine}"
    texts = slack.texts()
    assert len(texts) == len(set(texts)) == 40
    ledger.append(
        FaultRow(
            f"alerter leader SIGKILLed holding {held} messages ({engine.dialect.name})",
            40,
            len(texts),
            40 - len(set(texts)),
            len(texts) - len(set(texts)),
            stream.client.xlen(stream.dead_letter_stream),
            note=f"alerts; standby led {took:.1f} s after the kill (lease {LEADER_TTL_S:.0f} s)",
        )
    )


def test_a_sigkilled_promoter_leader_is_replaced_and_every_run_promoted_once(
    settings, engine, tmp_path, ledger
):
    if engine.dialect.name == "postgresql":
        pytest.skip(
            "the lease lives in Redis; checked once, on SQLite (the alerter's takeover on PostgreSQL)"
        )
    pair = Pair(
        "promoter",
        consumer_env(
            settings, FITSTREAM_MODEL_STORE=settings.model_store_url, FITSTREAM_PROMOTER_LOAD_CHECK="false"
        ),
        tmp_path,
    )
    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    files = []
    for i in range(8):
        path = tmp_path / f"ckpt-{i}.keras"
        files.append((path, _keras_file(path, i)))
    _publish_run(stream, "lead-run-0", "takeover", *files[0], 0.5)
    try:
        pair.start("p1")
        pair.start("p2")
        wait_for(lambda: list_versions(engine, "takeover"), timeout=60, message="the first run promoted")

        def publish_rest() -> None:
            for i, (path, sha) in enumerate(files[1:], start=1):
                _publish_run(stream, f"lead-run-{i}", "takeover", path, sha, 0.5 - 0.05 * i)

        dead, survivor, held, took = kill_the_leader_mid_batch(
            stream,
            "promoter",
            pair,
            engine,
            ("promoter_runs", "promoter_checkpoints", "model_versions", "model_aliases"),
            publish_rest,
        )
        wait_for(
            lambda: len(list_versions(engine, "takeover")) == 8, timeout=120, message="every run promoted"
        )
        wait_for(
            lambda: (g := stream.groups()[0])["lag"] == 0 and g["pending"] == 0,
            timeout=60,
            message="everything handled",
        )
        assert not tensorflow_mapped(pair.procs[survivor].pid), (
            "the promoter process never imports TensorFlow"
        )
    finally:
        pair.stop()
    assert "took the lead of group promoter and handled" in pair.log(survivor), pair.log(survivor)[-2000:]
    versions = list_versions(engine, "takeover")
    assert sorted(v["run_id"] for v in versions) == sorted(f"lead-run-{i}" for i in range(8))
    assert sorted(v["version"] for v in versions) == list(range(1, 9))
    with engine.connect() as conn:
        champion = conn.execute(
            sa.text(
                "SELECT v.run_id FROM model_aliases a JOIN model_versions v ON v.name = a.name "
                "AND v.version = a.version WHERE a.name = 'takeover' AND a.alias = 'champion'"
            )
        ).scalar()
    assert champion == "lead-run-7", "the best run (lowest val_loss) holds the champion"
    ledger.append(
        FaultRow(
            f"promoter leader SIGKILLed holding {held} messages ({engine.dialect.name})",
            8,
            len(versions),
            0,
            len(versions) - len({v["run_id"] for v in versions}),
            stream.client.xlen(stream.dead_letter_stream),
            note=f"versions; standby led {took:.1f} s after the kill (lease {LEADER_TTL_S:.0f} s)",
        )
    )
