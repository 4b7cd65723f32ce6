"""Issue 11, "Object stores": the model store on a real S3-compatible HTTP server, through s3fs.

fsspec's memory:// store renames atomically and shares one process's memory; S3 does neither. Here
moto's S3 server runs in a process of its own on loopback, and promoters are real processes
(``fitstream consume promoter``, ``fitstream promote``) that reach it as they would reach S3:
``FITSTREAM_MODEL_STORE=s3://…`` and the endpoint from ``FSSPEC_S3_ENDPOINT_URL`` (fsspec's own
configuration, which s3fs reads), credentials from the usual ``AWS_*`` variables.

Needs the dev dependencies ``s3fs`` and ``moto[server]`` (nothing is downloaded at test time).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import fsspec.config
import pytest
import redis

from pipeline.bus import EventStream
from pipeline.model_registry import describe, list_versions, load_model
from pipeline.store import open_store
from pipeline.store.fs import FsspecModelStore
from tests.conftest import REPO, free_port, settings_env, wait_for
from tests.test_promotion import _keras_file
from tests.test_promotion_promises import (
    RunningPromoter,
    _drained,
    _outcome,
    _outcomes,
    _run_events,
    _same_weights,
    _weights,
)

pytest.importorskip("s3fs", reason="the S3 tests need s3fs (the dev extra: pip install -e '.[dev]')")
pytest.importorskip(
    "moto.server", reason="the S3 tests need moto's server (the dev extra: pip install -e '.[dev]')"
)
import boto3

pytestmark = pytest.mark.slow

BUCKET = "fitstream-models"
SQLITE_ONLY = "the S3 store is what is under test; checked once, on SQLite"
_REQUEST = re.compile(
    r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/[0-9.]+(?:\x1b\[[0-9;]*m)*" (\d+)'
)


class S3Server:
    """moto's S3 server in a process of its own, on loopback; its access log is the order in which
    it answered requests."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.url = f"s3://{BUCKET}/models"
        self.log_path = directory / "moto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._answers, timeout=30, message="moto's S3 server to answer")
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        self.client.create_bucket(Bucket=BUCKET)

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()

    def keys(self, prefix: str) -> list[str]:
        """The objects under ``prefix``, straight from the server (no client-side cache)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def uploads(self, prefix: str) -> list[str]:
        """Keys of multipart uploads in progress (begun, neither completed nor aborted) under ``prefix``."""
        listed = self.client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
        return sorted(upload["Key"] for upload in listed.get("Uploads", []))

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request so far, in the order the server answered them."""
        return [(m, p, int(s)) for m, p, s in _REQUEST.findall(self.log_path.read_text(errors="replace"))]


@pytest.fixture
def s3(tmp_path, monkeypatch, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip(SQLITE_ONLY)
    server = S3Server(tmp_path)
    # Child processes read these from the environment; this process's fsspec read its configuration
    # at import, so it gets the endpoint the same way, set in fsspec.config.conf.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "fitstream-test",
        "AWS_SECRET_ACCESS_KEY": "fitstream-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "FSSPEC_S3_ENDPOINT_URL": server.endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": server.endpoint})
    server.start()
    yield server
    server.stop()


def _big_keras_file(path: Path, size_bytes: int) -> str:
    """A zip shaped like a .keras file (config.json and weights), ``size_bytes`` of random weights; its sha256."""
    import hashlib

    digest = hashlib.sha256()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {}}))
        with archive.open("model.weights.h5", "w", force_zip64=True) as weights:
            for _ in range(size_bytes >> 20):
                weights.write(os.urandom(1 << 20))
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _env(settings, s3: S3Server, **extra: str) -> dict[str, str]:
    """A promoter process's environment: the test's stream and database, the S3 store, no Keras load."""
    return {
        **os.environ,
        **settings_env(settings),
        "FITSTREAM_MODEL_STORE": s3.url,
        "FITSTREAM_PROMOTER_LOAD_CHECK": "false",
        "FITSTREAM_CLAIM_IDLE_MS": "1000",
        "FITSTREAM_LEADER_TTL_SECONDS": "1",
        "PYTHONPATH": str(REPO),
        **extra,
    }


def _promoter_process(settings, s3: S3Server, log: Path, *args: str) -> subprocess.Popen:
    """A real `fitstream consume promoter` on the S3 store, its stderr in ``log``."""
    with open(log, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "consume", "promoter", *args],
            env=_env(settings, s3),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=output,
        )


def _staging_copies(s3: S3Server, name: str) -> set[str]:
    """The staging folders of copies in progress for ``name``: objects or multipart uploads under one."""
    prefix = f"models/{name}/"
    keys = s3.keys(prefix) + s3.uploads(prefix)
    return {key[len(prefix) :].split("/", 1)[0] for key in keys if key[len(prefix) :].startswith(".staging-")}


# -- one promotion to S3, read back ---------------------------------------------------------------


def test_a_checkpoint_promoted_to_s3_loads_back_and_its_metadata_is_written_last(
    s3, settings, engine, tmp_path
):
    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    path = tmp_path / "ckpt.keras"
    sha = _keras_file(path, 5)
    with RunningPromoter(settings, engine, open_store(s3.url), load_check=True):
        stream.publish(_run_events("to-s3", "on-s3", path, sha, 0.2))
        [promoted] = _outcome(settings, "to-s3", timeout=90)
    assert promoted.type == "model_promoted" and promoted.version == 1, promoted
    info = describe(engine, "on-s3@champion")
    assert (info["path"], info["sha256"]) == (f"s3://{BUCKET}/models/on-s3/v1/model.keras", sha)
    assert s3.keys("models/on-s3/") == ["models/on-s3/v1/metadata.json", "models/on-s3/v1/model.keras"]
    assert s3.uploads("models/") == []
    loaded = load_model("on-s3@champion", settings=settings.model_copy(update={"model_store": s3.url}))
    assert _same_weights(loaded.get_weights(), _weights(path))

    # The server's own record: the version's metadata.json was written once, after the model file, and
    # nothing of the version was written after it.
    writes = [(m, p) for m, p, _status in s3.requests() if m in ("PUT", "POST") and "/models/on-s3/" in p]
    final = [i for i, (_m, p) in enumerate(writes) if p.split("?")[0].endswith("/v1/model.keras")]
    metadata = [i for i, (_m, p) in enumerate(writes) if p.split("?")[0].endswith("/v1/metadata.json")]
    assert final and metadata == [len(writes) - 1] and max(final) < metadata[0], writes


def test_a_reader_never_sees_a_version_before_its_model_file_is_complete(s3, tmp_path):
    # A reader with its own connection and caches (as another process has) polls the store while a
    # 64 MB model is uploaded and moved into place.
    big = tmp_path / "big.keras"
    big_sha = _big_keras_file(big, 64 << 20)
    small = tmp_path / "small.keras"
    _keras_file(small, 1)
    writer = open_store(s3.url)
    writer.put("watched", 1, str(small), {"run_id": "first"})
    reader = FsspecModelStore(s3.url, skip_instance_cache=True)
    assert reader.versions("watched") == [1]  # the reader has looked before the upload begins
    seen: list[tuple[list[int], set[str], dict[int, int]]] = []
    done = threading.Event()

    def watch() -> None:
        while True:
            finished = done.is_set()
            in_progress = _staging_copies(s3, "watched") | set(s3.keys("models/watched/v2/"))
            versions = reader.versions("watched")
            sizes = {}
            for version in versions:
                stored = reader.get("watched", version)
                found = s3.keys(f"models/watched/v{version}/model.keras")
                assert found, f"v{version} listed, but its model file is not there yet"
                head = s3.client.head_object(Bucket=BUCKET, Key=found[0])
                assert head["ContentLength"] == stored.size_bytes, (
                    f"v{version} listed with a partial model file"
                )
                sizes[version] = head["ContentLength"]
            seen.append((versions, in_progress, sizes))
            if finished:
                return

    failures: list[BaseException] = []
    watcher = threading.Thread(target=_recording, args=(watch, failures))
    watcher.start()
    wait_for(lambda: len(seen) >= 2 or failures, timeout=30, message="the reader to start polling")
    stored = writer.put("watched", 2, str(big), {"run_id": "second"})
    done.set()
    watcher.join(timeout=60)
    assert not failures, failures[0]
    assert stored.sha256 == big_sha and stored.size_bytes == big.stat().st_size
    # The reader looked while the copy was under way (else this proves nothing), and saw v2 only complete.
    assert any(in_progress and 2 not in versions for versions, in_progress, _sizes in seen), (
        "the reader never looked while the copy was under way"
    )
    assert seen[-1][0] == [1, 2] and seen[-1][2][2] == big.stat().st_size, (
        "the reader does not see the new version"
    )
    assert all(sizes.get(2, big.stat().st_size) == big.stat().st_size for _v, _p, sizes in seen)


def _recording(function, failures: list[BaseException]) -> None:
    try:
        function()
    except BaseException as exc:  # raised again in the test's thread
        failures.append(exc)


# -- a promoter killed mid-upload ---------------------------------------------------------------


def test_a_promoter_killed_mid_upload_leaves_nothing_visible_and_a_restart_promotes_once(
    s3,
    settings,
    engine,
    tmp_path,
):
    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    big = tmp_path / "big.keras"
    sha = _big_keras_file(big, 200 << 20)
    stream.publish(_run_events("killed", "large", big, sha, 0.2))
    doomed = _promoter_process(settings, s3, tmp_path / "doomed.log", "--name", "doomed")
    try:
        # Killed once the server holds part of the model (a multipart upload under a staging name).
        wait_for(
            lambda: doomed.poll() is not None or _parts_uploaded(s3, "models/large/") > 0,
            timeout=60,
            interval=0.02,
            message="the upload to begin",
        )
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    assert doomed.returncode == -signal.SIGKILL, (tmp_path / "doomed.log").read_text()
    # Nothing is visible: no version, no registration, no object of a version — only an unfinished upload.
    store = FsspecModelStore(s3.url, skip_instance_cache=True)
    assert store.versions("large") == [] and list_versions(engine, "large") == []
    assert [k for k in s3.keys("models/large/") if "/v" in k] == []
    assert len(s3.uploads("models/large/")) == 1
    # The dead promoter still holds the model's promotion lock; it expires (after 30 s) — here, now.
    lock = f"{settings.stream}:promoting:large"
    client = redis.Redis.from_url(settings.redis_url)
    assert client.get(lock).decode().startswith(f"{socket.gethostname()}-{doomed.pid}-")
    client.pexpire(lock, 1)

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
        env=_env(settings, s3),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert survivor.returncode == 0, survivor.stderr[-3000:]
    [promoted] = _outcomes(settings, "killed")
    assert promoted.type == "model_promoted" and promoted.version == 1, promoted
    assert [(v["version"], v["run_id"], v["sha256"]) for v in list_versions(engine, "large")] == [
        (1, "killed", sha)
    ]
    assert store.versions("large") == [1] and store.get("large", 1).sha256 == sha
    # Exactly one complete version and nothing else visible (the dead upload never becomes an object).
    assert s3.keys("models/large/") == ["models/large/v1/metadata.json", "models/large/v1/model.keras"]
    head = s3.client.head_object(Bucket=BUCKET, Key="models/large/v1/model.keras")
    assert head["ContentLength"] == big.stat().st_size
    # The dead promoter's parts stay an unfinished upload (S3 bills them until a lifecycle rule with
    # AbortIncompleteMultipartUpload removes them); they never become an object of the store.
    assert len(s3.uploads("models/large/")) == 1


def _parts_uploaded(s3: S3Server, prefix: str) -> int:
    uploads = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
    parts = (s3.client.list_parts(Bucket=BUCKET, Key=u["Key"], UploadId=u["UploadId"]) for u in uploads)
    return sum(len(listed.get("Parts", [])) for listed in parts)


# -- the promotion lock, across real processes --------------------------------------------------


class KeyWatch:
    """Redis MONITOR, keeping the commands that name one key (who tried to take a lock, and when)."""

    def __init__(self, url: str, key: str) -> None:
        self.key = key
        self.commands: list[str] = []
        self.monitor = redis.Redis.from_url(url).monitor().__enter__()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                command = self.monitor.next_command()["command"]
                if self.key in command:
                    self.commands.append(command)
        except (redis.RedisError, OSError, ValueError, AttributeError):
            return  # stopped

    def stop(self) -> None:
        self.monitor.connection.disconnect()
        self.thread.join(timeout=10)

    def attempts(self, pid: int) -> int:
        """How many times the process ``pid`` tried to take the lock (SET NX; its owner names its pid)."""
        return sum(1 for c in self.commands if c.startswith("SET ") and f"-{pid}-" in c and " NX" in c)


def test_the_promoter_and_fitstream_promote_take_turns_across_processes(s3, settings, engine, tmp_path):
    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    first, second = tmp_path / "first.keras", tmp_path / "second.keras"
    first_sha, second_sha = _big_keras_file(first, 200 << 20), _big_keras_file(second, 32 << 20)
    stream.publish(
        _run_events("by-promoter", "turns", first, first_sha, 0.2, trigger=False)
        + _run_events("by-hand", "turns", second, second_sha, 0.1, trigger=False)
    )
    watch = KeyWatch(settings.redis_url, f"{settings.stream}:promoting:turns")
    promoter = _promoter_process(settings, s3, tmp_path / "promoter.log")
    by_hand = None
    copies: list[set[str]] = []
    try:
        wait_for(lambda: _drained(stream), message="the promoter to record both runs")
        stream.publish(_run_events("by-promoter", "turns", first, first_sha, 0.2)[-1:])  # its early_stopped
        wait_for(
            lambda: _staging_copies(s3, "turns"),
            timeout=60,
            interval=0.02,
            message="the promoter's copy to begin",
        )
        by_hand = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "promote", "by-hand"],
            env=_env(settings, s3),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while by_hand.poll() is None and time.monotonic() < deadline:
            copies.append(_staging_copies(s3, "turns"))
        stdout, stderr = by_hand.communicate(timeout=10)
        wait_for(
            lambda: _outcomes(settings, "by-promoter"), timeout=60, message="the promoter's announcement"
        )
    finally:
        watch.stop()
        for process in (promoter, by_hand):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=20)
    assert by_hand.returncode == 0, stderr
    # Mutual exclusion, seen on the server: never two copies of "turns" under way at once, though both copied.
    overlapping = [c for c in copies if len(c) > 1]
    assert not overlapping, (
        f"two promotions copied at once, seen {len(overlapping)} times: {sorted(overlapping[0])}"
    )
    assert len(set().union(*copies)) == 2, "the two copies were not both seen"
    # And the turn-taking itself: `fitstream promote` came while the promoter held the lock, and waited.
    assert watch.attempts(promoter.pid) == 1, watch.commands[:10]
    assert watch.attempts(by_hand.pid) > 1, "`fitstream promote` never had to wait: the two did not overlap"
    [promoted] = _outcomes(settings, "by-promoter")
    assert promoted.type == "model_promoted" and (promoted.version, promoted.champion) == (1, True)
    assert "turns v2 registered and is the champion" in stderr  # 0.1 beats 0.2
    assert [
        (v["version"], v["run_id"], v["sha256"], v["aliases"]) for v in list_versions(engine, "turns")
    ] == [(1, "by-promoter", first_sha, []), (2, "by-hand", second_sha, ["champion", "latest"])]
    store = FsspecModelStore(s3.url, skip_instance_cache=True)
    assert [(v, store.get("turns", v).sha256) for v in store.versions("turns")] == [
        (1, first_sha),
        (2, second_sha),
    ]


# -- a long-running promoter sees what other processes wrote ------------------------------------


def test_a_running_promoter_sees_versions_other_processes_left_in_the_store(s3, settings, engine, tmp_path):
    # A promotion killed between copying and registering leaves its version in the store only; the next
    # promotion must go past it (tests/test_promotion.py checks this on a local disk, one process).
    stream = EventStream(settings=settings)
    stream.ensure_group("promoter")
    files = {}
    for seed, run_id in enumerate(("first", "later", "orphan")):
        path = tmp_path / f"{run_id}.keras"
        files[run_id] = (path, _keras_file(path, seed))
    stream.publish(
        _run_events("first", "orphans", *files["first"], 0.3)
        + _run_events("later", "orphans", *files["later"], 0.2, trigger=False)
    )
    with RunningPromoter(settings, engine, open_store(s3.url)):
        [first] = _outcome(settings, "first")
        wait_for(lambda: _drained(stream), message="both runs recorded")
    assert first.type == "model_promoted" and first.version == 1
    log = tmp_path / "promoter.log"
    promoter = _promoter_process(settings, s3, log)
    try:
        # Its start-up line comes once it has listed the store (looking for partial copies to clear).
        wait_for(lambda: "→ s3://" in log.read_text(), timeout=60, message="the promoter to start")
        other_process = FsspecModelStore(s3.url, skip_instance_cache=True)
        other_process.put("orphans", 2, str(files["orphan"][0]), {"run_id": "orphan"})
        before = len(s3.requests())
        stream.publish(_run_events("later", "orphans", *files["later"], 0.2)[-1:])  # its early_stopped
        [later] = _outcome(settings, "later", timeout=60)
    finally:
        promoter.terminate()
        promoter.wait(timeout=20)
    assert later.type == "model_promoted", later.reason if later.type == "promotion_skipped" else later
    assert later.version == 3
    # Straight to v3, copied once: not first into v2, found taken only after the upload (a listing from
    # before the orphan appeared would cost a whole wasted upload of the model).
    copies = {
        p.split("/")[4] for m, p, _s in s3.requests()[before:] if m in ("PUT", "POST") and "/.staging-" in p
    }
    assert len(copies) == 1, copies
    assert [(v["version"], v["run_id"]) for v in list_versions(engine, "orphans")] == [
        (1, "first"),
        (3, "later"),
    ]
    assert FsspecModelStore(s3.url, skip_instance_cache=True).versions("orphans") == [1, 2, 3]


# -- leftovers of interrupted copies --------------------------------------------------------------


def test_a_starting_promoter_clears_old_leftovers_on_s3_and_keeps_young_ones(s3, engine, monkeypatch):
    # A promoter killed between its upload and the move leaves a staging object behind. S3 has no folders,
    # so the staging "folder" has no time of its own: its objects' times tell its age.
    import pipeline.consumers.promoter as promoter_module
    from pipeline.consumers.promoter import Promoter

    old, young = "models/stale/.staging-old/model.keras", "models/stale/.staging-young/model.keras"
    s3.client.put_object(Bucket=BUCKET, Key=old, Body=b"half a model")
    # S3 times are whole seconds: a copy younger than 3 s may look up to 1 s older, never 3 s.
    monkeypatch.setattr(promoter_module, "STALE_STAGING_S", 3)
    modified = s3.client.head_object(Bucket=BUCKET, Key=old)["LastModified"].timestamp()
    wait_for(lambda: time.time() > modified + 3.5, timeout=10, message="the leftover to be 3 s old")
    s3.client.put_object(Bucket=BUCKET, Key=young, Body=b"a copy in progress")
    Promoter(engine, FsspecModelStore(s3.url, skip_instance_cache=True))
    assert s3.keys("models/stale/") == [young]
