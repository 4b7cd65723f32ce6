"""Fault 10: the promoter is SIGKILLed in the middle of copying a 400 MB checkpoint into the model
store; nothing partial is ever visible, and after a restart there is exactly one complete version.

The ledger's columns count versions here: published = checkpoints to promote, recorded = complete
versions in the store, duplicated = versions beyond one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from pipeline.bus import EventStream
from pipeline.model_registry import list_versions
from pipeline.store import open_store
from tests.conftest import REPO, settings_env
from tests.faults.conftest import FaultRow
from tests.test_promotion import _publish_run

pytestmark = pytest.mark.slow


def test_a_promoter_sigkilled_in_the_middle_of_a_real_copy_leaves_exactly_one_version(
    settings, engine, tmp_path, database_url, ledger
):
    # The real store and promoter process (no stand-in): kill -9 while the staging copy grows.
    if database_url.startswith("postgresql"):
        pytest.skip("the copy does not depend on the database; run once, on SQLite")
    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    path = tmp_path / "big.keras"
    block = os.urandom(4 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Sequential"}))
        with archive.open("model.weights.h5", "w", force_zip64=True) as weights:
            for _ in range(100):  # 400 MB: a copy long enough to be caught in the middle
                weights.write(block)
    size = path.stat().st_size
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    _publish_run(stream, "killed-copy", "resilient-real", path, sha, 0.2)
    # This file is no real Keras model: the Keras load is tested elsewhere; here only the copy matters.
    env = {
        **os.environ,
        **settings_env(settings),
        "FITSTREAM_MODEL_STORE": settings.model_store_url,
        "FITSTREAM_CLAIM_IDLE_MS": "1000",
        "FITSTREAM_LEADER_TTL_SECONDS": "1",
        "FITSTREAM_PROMOTER_LOAD_CHECK": "false",
    }
    store_dir = settings.model_store_url + "/resilient-real"
    doomed = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "consume", "promoter", "--name", "doomed"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    copied_at_kill = None
    deadline = time.monotonic() + 90
    while copied_at_kill is None and time.monotonic() < deadline and doomed.poll() is None:
        for staging in os.scandir(store_dir) if os.path.isdir(store_dir) else []:
            partial = os.path.join(staging.path, "model.keras")
            if (
                staging.name.startswith(".staging-")
                and os.path.exists(partial)
                and 0 < os.path.getsize(partial) < size
            ):
                os.kill(doomed.pid, signal.SIGKILL)
                copied_at_kill = os.path.getsize(partial)
                break
        time.sleep(0.001)
    doomed.wait(timeout=30)
    assert copied_at_kill is not None, (
        f"the copy was not caught in the middle: {doomed.stderr.read().decode()[-2000:]}"
    )
    assert doomed.returncode == -9
    store = open_store(settings.model_store_url)
    assert store.versions("resilient-real") == [] and list_versions(engine, "resilient-real") == []
    survivor = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "consume",
            "promoter",
            "--name",
            "survivor",
            "--exit-when-idle",
            "3",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert survivor.returncode == 0, survivor.stderr
    assert store.versions("resilient-real") == [1]
    assert [
        (v["version"], v["run_id"], v["sha256"], v["size_bytes"])
        for v in list_versions(engine, "resilient-real")
    ] == [(1, "killed-copy", sha, size)]
    assert store.discard_staging("resilient-real") == 1  # the killed copy's staging folder, never visible
    ledger.append(
        FaultRow(
            "10. promoter SIGKILLed mid-copy, then restarted",
            1,
            len(store.versions("resilient-real")),
            0,
            len(list_versions(engine, "resilient-real")) - 1,
            stream.client.xlen(stream.dead_letter_stream),
            note=f"versions; killed at {copied_at_kill >> 20} of {size >> 20} MiB",
        )
    )
