"""Secrets canary: the README's demo path (a real worker, recorder, promoter, and an alerter beside
them) runs with a Redis password, a secret webhook URL and an HMAC secret set, and a receiver that
fails once; then every log, every row of every table, every key in Redis, the files under
FITSTREAM_HOME, ``status --json`` and every error text are searched for them: zero hits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
import yaml

from tests.conftest import REPO, PrivateRedis, run_cli, wait_for

pytestmark = pytest.mark.slow

REDIS_PASSWORD = "canary-redis-7f3a9c1e"
WEBHOOK_TOKEN = "canary-hook-token-5d2b8e"
HMAC_SECRET = "canary-hmac-secret-91c4"
CANARIES = (REDIS_PASSWORD, WEBHOOK_TOKEN, HMAC_SECRET)


def redis_dump(client: redis.Redis) -> str:
    """Every key and value the stack left in Redis, as text."""
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "stream":
            value = client.xrange(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = client.get(key)
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def sql_dump(database_url: str) -> str:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            return "\n".join(
                repr(row) for table in tables for row in conn.execute(sa.text(f'SELECT * FROM "{table}"'))
            )
    finally:
        engine.dispose()


def files_under(root: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def test_no_secret_reaches_a_log_a_row_an_event_or_an_error(tmp_path, stream_name, slack, hook):
    server = PrivateRedis(tmp_path / "redis", password=REDIS_PASSWORD)
    server.start()
    home = tmp_path / "home"
    database_url = f"sqlite:///{tmp_path / 'history.db'}"
    rules = tmp_path / "alerts.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "channels": {
                    "team": {"type": "slack", "url_env": "SLACK_WEBHOOK_URL"},
                    "ops": {
                        "type": "webhook",
                        "url_env": "OPS_WEBHOOK_URL",
                        "secret_env": "OPS_WEBHOOK_SECRET",
                    },
                },
                "rules": [
                    {
                        "name": "lifecycle",
                        "on": ["run_started", "run_finished", "model_promoted"],
                        "channels": ["team", "ops"],
                    }
                ],
            }
        )
    )
    slack_url = slack.url.replace("s3cr3t-token", WEBHOOK_TOKEN)
    env = {
        **os.environ,
        "FITSTREAM_REDIS_URL": server.url,
        "FITSTREAM_DATABASE_URL": database_url,
        "FITSTREAM_HOME": str(home),
        "FITSTREAM_STREAM": stream_name,
        "FITSTREAM_ALERT_RULES": str(rules),
        "SLACK_WEBHOOK_URL": slack_url,
        "OPS_WEBHOOK_URL": f"{hook.url}?token={WEBHOOK_TOKEN}",
        "OPS_WEBHOOK_SECRET": HMAC_SECRET,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    slack.respond(500)  # the first delivery fails: its error text is logged and kept in SQL
    hook.respond(200, delay=12.0)  # the first signed POST times out
    alerter_log = tmp_path / "alerter.log"
    fitstream_env = {k: v for k, v in env.items() if k.startswith("FITSTREAM_")}
    try:
        run_cli("db", "upgrade", env_extra=fitstream_env)
        with open(alerter_log, "wb") as log:
            alerter = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli.main", "consume", "alerter", "--name", "canary"],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                demo = subprocess.run(
                    [sys.executable, "-m", "pipeline.cli.main", "demo"],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=REPO,
                    timeout=420,
                )
                assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
                wait_for(
                    lambda: len(slack.accepted) >= 3 and len(hook.accepted) >= 3,
                    timeout=120,
                    message="alerts delivered",
                )
            finally:
                alerter.send_signal(signal.SIGTERM)
                alerter.wait(timeout=60)
        status = run_cli("status", "--json", env_extra=fitstream_env)
        failure = run_cli("runs", "show", "no-such-run", env_extra=fitstream_env, check=False)
        redis_text = redis_dump(redis.Redis.from_url(server.url))
    finally:
        server.stop()

    rows = sql_dump(database_url)
    assert "delivered" in rows and "model_promoted" in rows
    logged = alerter_log.read_text(errors="replace")
    assert "Read timed out" in logged, "the timed-out delivery is logged (masked)"
    assert [r["status"] for r in slack.requests][:1] == [500], "the first Slack delivery failed"
    places = {
        "demo output": demo.stdout + demo.stderr,
        "alerter log": logged,
        "SQL rows": rows,
        "Redis keys": redis_text,
        "status --json": status.stdout + status.stderr,
        "an error message": failure.stdout + failure.stderr,
        **{f"file {name}": data.decode(errors="replace") for name, data in files_under(home).items()},
    }
    assert len(places) > 8, sorted(places)  # logs, checkpoints, job records: the home really was searched
    json.loads(status.stdout)
    leaks = [(where, canary) for where, text in places.items() for canary in CANARIES if canary in text]
    assert leaks == []
