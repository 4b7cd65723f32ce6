"""Sharding across a real 3-node Redis Cluster started on loopback by the test.

Publishing and consuming over 4 shards spread across the nodes: each run's events in order, nothing
lost across shards, a recorder SIGKILLed on one shard, dead letters replayed on the shard's node,
``fitstream status`` per shard. The Celery broker stays a plain Redis (the local one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline import events as ev
from pipeline.bus import EventStream, shard_of
from pipeline.config import Settings
from pipeline.consumers.base import Received, leader_key
from pipeline.consumers.recorder import Recorder
from pipeline.consumers.shards import ShardedConsumers
from pipeline.dead_letters import list_dead_letters, replay
from tests.conftest import REDIS_URL, REPO, run_cli, wait_for
from tests.redis_cluster import LocalRedisCluster
from tests.stream_helpers import RECORDED_EVENT_COUNT, epoch_events

SHARDS = 4
postgres_only = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    server = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def on_cluster(cluster: LocalRedisCluster, settings: Settings) -> Iterator[Settings]:
    yield settings.model_copy(
        update={"redis_url": cluster.url, "stream_shards": SHARDS, "broker_url": REDIS_URL}
    )
    cluster.flush()


def _env(settings: Settings) -> dict[str, str]:
    return {
        "FITSTREAM_REDIS_URL": settings.redis_url,
        "FITSTREAM_BROKER_URL": REDIS_URL,
        "FITSTREAM_DATABASE_URL": settings.database_url,
        "FITSTREAM_HOME": str(settings.home),
        "FITSTREAM_STREAM": settings.stream,
        "FITSTREAM_STREAM_SHARDS": str(SHARDS),
        "FITSTREAM_CONSUMER_BLOCK_MS": "100",
    }


def _recorder(settings: Settings, name: str, shards: Sequence[int] = ()) -> subprocess.Popen:
    args = [arg for s in shards for arg in ("--shard", str(s))]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "consume",
            "recorder",
            "--name",
            name,
            "--batch-size",
            "50",
            "--claim-idle-ms",
            "1000",
            *args,
        ],
        env={**os.environ, **_env(settings)},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _consumers(shard: EventStream) -> int:
    return next((int(g["consumers"]) for g in shard.groups() if g["name"] == "recorder"), 0)


def _count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar() or 0)


def _publish_concurrently(
    settings: Settings, items: list[ev.Event], publishers: int = 4, chunk: int = 37
) -> None:
    """Several publishers at once, each with its own client, as training processes on many hosts."""
    by_run: dict[str, list[ev.Event]] = defaultdict(list)
    for event in items:
        by_run[event.run_id].append(event)
    runs = sorted(by_run)
    errors: list[BaseException] = []

    def publish(mine: list[str]) -> None:
        try:
            stream = EventStream(settings=settings)
            ordered = [
                e
                for step in range(max(len(by_run[r]) for r in mine))
                for r in mine
                if step < len(by_run[r])
                for e in [by_run[r][step]]
            ]
            for start in range(0, len(ordered), chunk):
                stream.publish(ordered[start : start + chunk])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(runs[i::publishers],)) for i in range(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def test_each_shard_lives_on_one_node_and_the_shards_spread_over_the_nodes(cluster, on_cluster):
    stream = EventStream(settings=on_cluster)
    nodes = set()
    for shard in stream.all_shards():
        keys = [
            shard.stream,
            shard.dead_letter_stream,
            shard.dead_letter_counts_key,
            shard.dead_letter_kinds_key,
            shard.forced_trims_key,
            leader_key(shard.stream, "alerter"),
            shard._states_key("recorder"),
        ]
        assert len({cluster.node_of(k) for k in keys}) == 1, keys
        assert len({stream.client.keyslot(k) for k in keys}) == 1, keys
        nodes.add(cluster.node_of(shard.stream))
    assert len(nodes) >= 2, "4 shards all on one node of 3: the hash tags do not spread"


@postgres_only
def test_sharded_publishing_and_consuming_keep_each_runs_order_and_lose_nothing(on_cluster, engine):
    items = epoch_events(run_count=40, epochs=12, metrics=4)
    recorders = [_recorder(on_cluster, "rec-a"), _recorder(on_cluster, "rec-b")]  # both take every shard
    try:
        # Both are reading every shard before the first event goes out, so that both share the work.
        wait_for(
            lambda: all(_consumers(shard) == 2 for shard in EventStream(settings=on_cluster).all_shards()),
            timeout=60,
            message="both recorders reading every shard",
        )
        _publish_concurrently(on_cluster, items)
        wait_for(
            lambda: _count(engine, RECORDED_EVENT_COUNT) == len(items),
            timeout=90,
            message="every event recorded",
        )
    finally:
        _stop(*recorders)
    stream = EventStream(settings=on_cluster)
    seen_on: dict[str, int] = {}
    for shard in stream.all_shards():
        seqs: dict[str, list[int]] = defaultdict(list)
        for _mid, fields in shard.client.xrange(shard.stream):
            event = ev.decode(fields)
            assert seen_on.setdefault(event.run_id, shard.shard) == shard.shard, (
                "a run's events on two shards"
            )
            seqs[event.run_id].append(event.seq)
        for run_id, run_seqs in seqs.items():
            assert run_seqs == list(range(14)), (run_id, run_seqs)
    assert len(seen_on) == 40 and len(set(seen_on.values())) == SHARDS
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT run_id, count(*), max(epoch) FROM epoch_metrics GROUP BY run_id")
        ).all()
    assert len(rows) == 40 and {(n, top) for _r, n, top in rows} == {(12 * 4, 11)}
    report = json.loads(run_cli("status", "--json", env_extra=_env(on_cluster)).stdout)
    assert report["stream"]["shards"] == SHARDS and report["stream"]["length"] == len(items)
    for shard in report["shards"]:
        (group,) = [g for g in shard["consumer_groups"] if g["group"] == "recorder"]
        assert group["lag"] == 0 and group["pending"] == 0 and group["consumers"] == 2


@postgres_only
def test_a_recorder_sigkilled_on_one_shard_loses_nothing(on_cluster, engine):
    """Shard 1 has a recorder of its own; it is SIGKILLed while events keep coming. Its replacement
    (another consumer name) reclaims what it left pending; the other shards never stop."""
    items = epoch_events(run_count=48, epochs=16, metrics=6)
    on_one = {e.run_id for e in items if shard_of(e.run_id, SHARDS) == 1}
    assert on_one
    others, victim = _recorder(on_cluster, "rec-rest", [0, 2, 3]), _recorder(on_cluster, "rec-1", [1])
    replacement = None
    try:
        half = len(items) // 2
        _publish_concurrently(on_cluster, items[:half], publishers=2)
        wait_for(
            lambda: (
                _count(
                    engine,
                    f"SELECT count(*) FROM epoch_metrics WHERE run_id IN ({','.join(repr(r) for r in on_one)})",
                )
                > 0
            ),
            timeout=60,
            message="shard 1 recording",
        )
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        _publish_concurrently(on_cluster, items[half:], publishers=2)
        replacement = _recorder(on_cluster, "rec-1b", [1])
        wait_for(
            lambda: _count(engine, RECORDED_EVENT_COUNT) == len(items),
            timeout=120,
            message="every event recorded",
        )
    finally:
        _stop(others, victim, *([replacement] if replacement else []))
    with engine.connect() as conn:
        per_run = dict(
            conn.execute(sa.text("SELECT run_id, count(*) FROM epoch_metrics GROUP BY run_id")).all()
        )
    assert len(per_run) == 48 and set(per_run.values()) == {16 * 6}
    stream = EventStream(settings=on_cluster)
    shard = stream.for_shard(1)
    assert int(shard.client.xpending(shard.stream, "recorder")["pending"]) == 0


class _OrderProbe:
    """An ordered handler that remembers the order it was given each run's events in."""

    group = "order-probe"
    ordered = True

    def __init__(self, seen: dict[str, list[int]], lock: threading.Lock) -> None:
        self.seen, self.lock = seen, lock

    def handle(self, batch: Sequence[Received]) -> None:
        with self.lock:
            for item in batch:
                self.seen[item.event.run_id].append(item.event.seq)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_ordered_group_leads_each_shard_and_sees_every_run_in_order(on_cluster):
    seen: dict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()
    items = epoch_events(run_count=30, epochs=8)
    _publish_concurrently(on_cluster, items)
    consumers = ShardedConsumers(
        lambda: _OrderProbe(seen, lock), EventStream(settings=on_cluster), consumer_name="probe", batch_size=7
    )
    consumers.run(idle_exit_after=1.0)
    assert len(seen) == 30 and all(seqs == list(range(10)) for seqs in seen.values()), dict(seen)
    stream = EventStream(settings=on_cluster)
    assert [stream.client.get(leader_key(s.stream, "order-probe")) for s in stream.all_shards()] == [
        None
    ] * SHARDS  # released


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dead_letters_are_replayed_on_their_shards_node(on_cluster, engine):
    stream = EventStream(settings=on_cluster)
    items = epoch_events(run_count=6, epochs=1)
    stream.publish(items)
    for shard in stream.all_shards():
        shard.client.xadd(shard.stream, {"v": "1", "event": json.dumps({"run_id": "x", "type": "nope"})})
    ShardedConsumers(lambda: Recorder(engine, on_cluster), stream, consumer_name="t").run(idle_exit_after=0.5)
    letters = list_dead_letters(stream)
    assert sorted(letter.id.split("/")[0] for letter in letters) == ["0", "1", "2", "3"]
    new_ids = replay(stream, [letter.id for letter in letters])  # one Lua script per letter, keys in one slot
    assert len(new_ids) == 4 and list_dead_letters(stream) == []
    listed = run_cli("dead-letters", "list", env_extra=_env(on_cluster))
    assert listed.returncode == 0


def test_a_cluster_url_without_a_broker_is_refused_with_what_to_set(cluster, tmp_path: Path):
    result = run_cli(
        "status",
        env_extra={
            "FITSTREAM_REDIS_URL": cluster.url,
            "FITSTREAM_BROKER_URL": "",
            "FITSTREAM_DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}",
        },
        check=False,
    )
    assert result.returncode != 0 and "FITSTREAM_BROKER_URL" in result.stderr, result.stderr
