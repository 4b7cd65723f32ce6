"""Ordered consumer groups and the Redis lease behind them, against a real Redis."""

from __future__ import annotations

import json
import threading
import time

import redis

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.config import Settings
from pipeline.consumers.base import ConsumerLoop
from pipeline.lease import LeaseKeeper, RedisLease
from tests.conftest import run_cli, settings_env, wait_for


def test_a_kept_lease_outlives_its_ttl_and_a_lost_one_is_noticed(redis_url, stream_name):
    client = redis.Redis.from_url(redis_url)
    key = f"{stream_name}:lease-test"
    mine = RedisLease(client, key, owner="me", ttl_s=0.3)
    theirs = RedisLease(client, key, owner="them", ttl_s=0.3)
    assert (
        mine.acquire()
        and not mine.acquire()
        and mine.acquire(reentrant=True)
        and not theirs.acquire(reentrant=True)
    )
    keeper = LeaseKeeper(mine)
    time.sleep(1.0)  # three lease lifetimes
    assert mine.holder() == "me" and not keeper.lost.is_set()
    client.set(key, "them", px=5000)  # taken over (say, after a pause longer than the lease)
    wait_for(keeper.lost.is_set, timeout=2, message="the keeper notices")
    keeper.stop()
    client.delete(key)


class SlowOrderedHandler:
    group = "ordered-test"
    ordered = True

    def __init__(self, first_batch_s: float = 0.0):
        self.first_batch_s = first_batch_s
        self.seen: list[int] = []

    def handle(self, batch):
        if not self.seen and self.first_batch_s:
            time.sleep(self.first_batch_s)  # longer than the lease itself
        self.seen.extend(r.event.seq for r in batch)


def test_a_leader_busy_longer_than_its_lease_keeps_the_lead(redis_url, stream_name, tmp_path):
    settings = Settings(
        redis_url=redis_url,
        stream=stream_name,
        home=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'history.db'}",
        consumer_block_ms=100,
        leader_ttl_seconds=0.5,
    )
    stream = EventStream(settings=settings)
    stream.ensure_group("ordered-test")
    stream.publish(
        [ev.build(ev.EpochEnd, run_id="r", seq=i, epoch=i, metrics={"loss": 1.0}) for i in range(1, 41)]
    )
    leader_handler, standby_handler = SlowOrderedHandler(first_batch_s=1.5), SlowOrderedHandler()
    leader = ConsumerLoop(
        leader_handler, EventStream(settings=settings), consumer_name="leader", batch_size=10
    )
    standby = ConsumerLoop(
        standby_handler, EventStream(settings=settings), consumer_name="standby", batch_size=10
    )
    threads = [threading.Thread(target=loop.run, daemon=True) for loop in (leader, standby)]
    threads[0].start()
    wait_for(lambda: leader.leader.holder() == "leader", message="leader leads")
    threads[1].start()
    status = json.loads(run_cli("status", "--json", env_extra=settings_env(settings)).stdout)
    assert {"group": "ordered-test", "leader": "leader"}.items() <= next(
        g for g in status["consumer_groups"] if g["group"] == "ordered-test"
    ).items()
    try:
        wait_for(lambda: len(leader_handler.seen) == 40, timeout=30, message="all events handled")
    finally:
        for loop in (leader, standby):
            loop.stop_event.set()
        for thread in threads:
            thread.join(timeout=10)
    assert leader_handler.seen == list(range(1, 41)) and standby_handler.seen == []
    assert stream.client.get(f"{stream_name}:ordered-test:leader") is None  # released on stop
