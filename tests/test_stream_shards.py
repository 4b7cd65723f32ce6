"""A stream sharded by run id (FITSTREAM_STREAM_SHARDS) on the local Redis, with real consumer processes.

The same promises on a real 3-node Redis Cluster: tests/test_redis_cluster.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest
import sqlalchemy as sa

from pipeline import events as ev
from pipeline.bus import EventStream, shard_of, shard_stream_name
from pipeline.config import Settings
from pipeline.consumers.recorder import Recorder
from pipeline.consumers.shards import ShardedConsumers
from pipeline.dead_letters import get_dead_letter, list_dead_letters, replay
from pipeline.errors import ConfigurationError
from pipeline.run_watch import follow_run
from tests.conftest import REPO, run_cli, settings_env, wait_for
from tests.stream_helpers import RECORDED_EVENT_COUNT, epoch_events

SHARDS = 4


@pytest.fixture
def sharded(settings: Settings) -> Settings:
    return settings.model_copy(update={"stream_shards": SHARDS})


def _entries_by_shard(stream: EventStream) -> dict[int, list[tuple[str, ev.Event]]]:
    out = {}
    for shard in stream.all_shards():
        out[shard.shard] = [
            (mid.decode(), ev.decode(fields)) for mid, fields in shard.client.xrange(shard.stream)
        ]
    return out


def _count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar() or 0)


def test_shard_names_are_hash_tagged_and_one_shard_keeps_the_old_key():
    assert shard_stream_name("fitstream:events", 0, 1) == "fitstream:events"
    assert shard_stream_name("fitstream:events", 0, 1, cluster=True) == "{fitstream:events:0}"
    assert [shard_stream_name("s", i, 3) for i in range(3)] == ["{s:0}", "{s:1}", "{s:2}"]
    runs = [f"run-{i}" for i in range(2000)]
    counts = [sum(1 for r in runs if shard_of(r, SHARDS) == s) for s in range(SHARDS)]
    assert all(400 <= c <= 600 for c in counts), counts  # spread evenly enough to share the load
    assert all(shard_of(r, 1) == 0 for r in runs[:50])


def test_publish_routes_each_run_to_one_shard_in_order_and_returns_ids_in_the_order_given(sharded):
    stream = EventStream(settings=sharded)
    items = epoch_events(run_count=24, epochs=5)
    # Interleave the runs, and send half as encoded fields (as the spool and the sender do).
    items.sort(key=lambda e: (e.seq, e.run_id))
    mixed = [ev.encode(e) if i % 2 else e for i, e in enumerate(items)]
    ids = stream.publish(mixed)
    by_shard = _entries_by_shard(stream)
    assert sum(len(v) for v in by_shard.values()) == len(items)
    where = {}
    for shard, entries in by_shard.items():
        seqs = defaultdict(list)
        for mid, event in entries:
            assert shard_of(event.run_id, SHARDS) == shard
            where[event.id] = mid
            seqs[event.run_id].append(event.seq)
        for run_id, run_seqs in seqs.items():
            assert run_seqs == sorted(run_seqs) == list(range(7)), run_id
    assert len([s for s, v in by_shard.items() if v]) == SHARDS
    assert ids == [where[e.id] for e in items]
    # Run ids that JSON escapes route like any other, encoded or not.
    for odd in ('run "quoted" \\ ü', "run-\u2028-x", "ünïcode"):
        built = ev.build(ev.RunStarted, run_id=odd, seq=0, name="odd")
        stream.publish([ev.encode(built)])
        assert any(e.id == built.id for _m, e in _entries_by_shard(stream)[shard_of(odd, SHARDS)])
    # The object for any shard publishes the same way.
    more = epoch_events(run_count=3, epochs=1)
    stream.for_shard(3).publish(more)
    for event in more:
        shard = stream.for_run(event.run_id)
        assert any(e.id == event.id for _m, e in _entries_by_shard(stream)[shard.shard])


def test_a_shard_that_does_not_exist_is_refused_with_the_setting_named(sharded):
    with pytest.raises(ValueError, match="FITSTREAM_STREAM_SHARDS is 4"):
        EventStream(settings=sharded, shard=4)
    with pytest.raises(ConfigurationError, match="there are 4 shards"):
        ShardedConsumers(lambda: object(), EventStream(settings=sharded), shards=[5])  # type: ignore[arg-type,return-value]


def test_one_process_consumes_every_shard_and_status_reports_lag_per_shard(sharded, engine):
    stream = EventStream(settings=sharded)
    items = epoch_events(run_count=20, epochs=6)
    stream.publish(items)
    env = {
        **settings_env(sharded),
        "FITSTREAM_STREAM_SHARDS": str(SHARDS),
        "FITSTREAM_CONSUMER_BLOCK_MS": "100",
    }
    before = json.loads(run_cli("status", "--json", env_extra=env).stdout)
    assert before["stream"] == {"name": sharded.stream, "length": len(items), "shards": SHARDS}
    assert [s["stream"] for s in before["shards"]] == [f"{{{sharded.stream}:{i}}}" for i in range(SHARDS)]
    assert sum(s["length"] for s in before["shards"]) == len(items)

    result = run_cli("consume", "recorder", "--exit-when-idle", "2", env_extra=env)
    assert all(f"{{{sharded.stream}:{i}}}" in result.stderr for i in range(SHARDS)), result.stderr
    assert _count(engine, RECORDED_EVENT_COUNT) == len(items)

    after = json.loads(run_cli("status", "--json", env_extra=env).stdout)
    for shard in after["shards"]:
        (group,) = [g for g in shard["consumer_groups"] if g["group"] == "recorder"]
        assert group["lag"] == 0 and group["pending"] == 0, shard
    (total,) = [g for g in after["consumer_groups"] if g["group"] == "recorder"]
    assert total["lag"] == 0 and total["pending"] == 0
    text = run_cli("status", env_extra=env).stdout
    assert "shards" in text and "recorder lag" in text


def test_consumers_split_by_shard_and_a_sigkilled_one_loses_nothing(sharded, engine):
    """Two recorder processes, shards 0-1 and 2-3. The second is SIGKILLed mid-stream with batches
    pending; its replacement (another name) reclaims them. Every event is recorded exactly once."""
    stream = EventStream(settings=sharded)
    env = {
        **os.environ,
        **settings_env(sharded),
        "FITSTREAM_STREAM_SHARDS": str(SHARDS),
        "FITSTREAM_CONSUMER_BLOCK_MS": "100",
    }

    def start(name: str, *shards: int) -> subprocess.Popen:
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
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    first, second = start("rec-a", 0, 1), start("rec-b", 2, 3)
    items = epoch_events(run_count=60, epochs=20, metrics=8)
    try:
        half = len(items) // 2
        stream.publish(items[:half])
        wait_for(lambda: _count(engine, RECORDED_EVENT_COUNT) > 100, timeout=60, message="recording to start")
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=10)
        stream.publish(items[half:])
        replacement = start("rec-c", 2, 3)
        try:
            wait_for(
                lambda: _count(engine, RECORDED_EVENT_COUNT) == len(items),
                timeout=90,
                message="every event recorded",
            )
        finally:
            replacement.send_signal(signal.SIGTERM)
            replacement.wait(timeout=30)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    with engine.connect() as conn:
        per_run = dict(
            conn.execute(sa.text("SELECT run_id, count(*) FROM epoch_metrics GROUP BY run_id")).all()
        )
    assert len(per_run) == 60 and set(per_run.values()) == {20 * 8}
    for shard in stream.all_shards():
        assert int(shard.client.xpending(shard.stream, "recorder")["pending"]) == 0


def test_dead_letters_name_their_shard_and_replay_onto_it(sharded, engine):
    stream = EventStream(settings=sharded)
    good = epoch_events(run_count=1, epochs=2)
    shard = stream.for_run(good[0].run_id)
    shard.client.xadd(shard.stream, {"v": "1", "event": "{not json"})
    consumers = ShardedConsumers(lambda: Recorder(engine, sharded), stream, consumer_name="t")
    consumers.run(idle_exit_after=0.5)
    (letter,) = list_dead_letters(stream)
    assert letter.id.startswith(f"{shard.shard}/") and letter.group == "recorder"
    assert get_dead_letter(stream, letter.id).reason == letter.reason
    with pytest.raises(ConfigurationError, match="names no shard"):
        get_dead_letter(stream, letter.id.split("/")[1])
    (new_id,) = replay(stream, [letter.id])
    assert shard.client.xrange(shard.stream, new_id, new_id)
    assert list_dead_letters(stream) == []
    assert (
        run_cli(
            "dead-letters",
            "list",
            env_extra={**settings_env(sharded), "FITSTREAM_STREAM_SHARDS": str(SHARDS)},
        ).returncode
        == 0
    )


def test_following_a_run_reads_its_shard(sharded):
    stream = EventStream(settings=sharded)
    items = epoch_events(run_count=8, epochs=3)
    target = items[-1].run_id
    got: list[ev.Event] = []
    reader = threading.Thread(target=lambda: got.extend(follow_run(stream, target, timeout=20, block_ms=100)))
    reader.start()
    stream.publish(items)
    reader.join(timeout=30)
    assert [e.seq for e in got] == list(range(5)) and got[-1].type == "run_finished"


def test_a_cluster_url_needs_a_plain_redis_broker():
    settings = Settings(redis_url="redis+cluster://127.0.0.1:7000")
    with pytest.raises(ConfigurationError, match="FITSTREAM_BROKER_URL"):
        settings.celery_broker_url  # noqa: B018
    assert Settings(
        redis_url="redis+cluster://127.0.0.1:7000", broker_url="redis://127.0.0.1:6379/0"
    ).celery_broker_url.startswith("redis://")
    with pytest.raises(ValueError, match="redis\\+cluster://"):
        Settings(redis_url="http://127.0.0.1:7000")


def test_threads_asking_for_the_lazy_client_at_once_share_one(redis_url, monkeypatch):
    """A client made twice and dropped once closes its pool under a command in flight (seen in CI as
    'Timeout reading from socket' when `follow_run`'s thread and `publish` connected together)."""
    import pipeline.bus as bus

    real_connect = bus.connect

    def slow_connect(url: str, **kwargs):
        time.sleep(0.05)  # widens the window between "no client yet" and "client set"
        return real_connect(url, **kwargs)

    monkeypatch.setattr(bus, "connect", slow_connect)
    stream = EventStream(redis_url=redis_url, settings=Settings(stream_shards=SHARDS))
    start = threading.Barrier(8)
    clients: list[object] = []

    def ask() -> None:
        start.wait()
        clients.append(stream.client)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in clients}) == 1 and clients[0] is stream.client
