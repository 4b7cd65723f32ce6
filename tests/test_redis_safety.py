"""Issue 10: `fitstream status` warns when the Redis it talks to would lose events (no persistence,
an evicting memory policy) or let anyone in (no password on a non-loopback address)."""

from __future__ import annotations

import json

import redis

from pipeline.bus import EventStream
from pipeline.config import Settings
from tests.conftest import run_cli


def test_status_warns_about_a_redis_that_keeps_nothing_or_evicts(private_redis, tmp_path):
    private_redis.start()  # AOF on, no snapshots: safe
    client = redis.Redis.from_url(private_redis.url)
    env = {
        "FITSTREAM_REDIS_URL": private_redis.url,
        "FITSTREAM_DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}",
        "FITSTREAM_HOME": str(tmp_path / "home"),
    }
    assert json.loads(run_cli("status", "--json", env_extra=env).stdout)["redis_warnings"] == []
    client.config_set("appendonly", "no")
    client.config_set("maxmemory-policy", "allkeys-lru")
    report = run_cli("status", env_extra=env)
    warnings = " ".join(report.stderr.split())
    assert "Redis keeps no data across a restart" in warnings and "maxmemory-policy allkeys-lru" in warnings
    client.config_set("save", "3600 1")
    assert "persists by snapshots only" in " ".join(run_cli("status", env_extra=env).stderr.split())


def test_a_redis_without_password_on_a_non_loopback_address_is_flagged(monkeypatch):
    """Pure unit test: no connection is made (CONFIG is refused as a managed Redis would)."""
    client = redis.Redis(host="redis.internal.example", port=6379)
    monkeypatch.setattr(
        client,
        "config_get",
        lambda *_a, **_k: (_ for _ in ()).throw(redis.ResponseError("unknown command 'CONFIG'")),
    )
    stream = EventStream(client=client, settings=Settings(redis_url="redis://redis.internal.example:6379/0"))
    assert any("without a password" in w for w in stream.safety_warnings())
    secured = redis.Redis(host="redis.internal.example", port=6379, password="s3cret")
    monkeypatch.setattr(secured, "config_get", lambda *_a, **_k: {})
    assert (
        EventStream(
            client=secured, settings=Settings(redis_url="redis://:s3cret@redis.internal.example:6379/0")
        ).safety_warnings()
        == []
    )
