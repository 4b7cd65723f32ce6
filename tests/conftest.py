"""Fixtures that give each test real services: a Redis stream of its own and a fresh database.

PostgreSQL: FITSTREAM_TEST_POSTGRES_URL (``./dev test`` makes sure one answers).
Each test that asks for ``database_url`` runs once on SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import hypothesis  # noqa: F401  imported now, not by its pytest plugin at the end of a run (see below)
import pytest
import redis
import sqlalchemy as sa

from pipeline.bus import EventStream
from pipeline.config import Settings
from pipeline.consumers.base import ConsumerLoop
from pipeline.consumers.recorder import Recorder
from pipeline.db import migrate
from pipeline.db.session import make_engine
from tests.slack_server import SlackLikeServer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Hypothesis' pytest plugin imports hypothesis lazily, in its end-of-run summary, and pytest then
# parses its modules (to rewrite asserts). On CPython 3.11.7 that parse failed with "SystemError:
# AST constructor recursion depth mismatch" after a test leaked PostgreSQL connections (their
# finalizers ran mid-parse), turning a green run into an internal error; importing it above, at
# collection, leaves nothing to parse late.
REPO = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("FITSTREAM_REDIS_URL", "redis://localhost:6379/0")
POSTGRES_URL = os.environ.get(
    "FITSTREAM_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis at {REDIS_URL} ({exc}); run the suite with ./dev test, which starts one")
    return REDIS_URL


@pytest.fixture
def stream_name(redis_url: str) -> Iterator[str]:
    name = f"fitstream:test:{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = [*client.scan_iter(match=f"{name}*"), *client.scan_iter(match=f"{{{name}:*")]  # sharded: {name:N}
    if keys:
        client.delete(*keys)


def _postgres_database() -> Iterator[str]:
    import psycopg

    admin_url = POSTGRES_URL
    name = f"fitstream_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at FITSTREAM_TEST_POSTGRES_URL is not usable ({exc}); run ./dev test")
    base = sa.engine.make_url(admin_url)
    url = base.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    yield url
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'history.db'}"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, stream_name: str, database_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        home=tmp_path / "home",
        stream=stream_name,
        claim_idle_ms=1000,
        consumer_block_ms=100,
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[sa.Engine]:
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


class ConsumerThread:
    """A real consumer (its consumer group, real Redis, real database) running ``handler`` in a thread."""

    def __init__(self, handler: object, settings: Settings, name: str) -> None:
        self.loop = ConsumerLoop(handler, EventStream(settings=settings), consumer_name=name)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)

    def __enter__(self) -> ConsumerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.stop_event.set()
        self.thread.join(timeout=30)


class RecorderThread(ConsumerThread):
    """A real recorder (consumer group, real Redis, real database) running in a thread."""

    def __init__(self, settings: Settings, engine: sa.Engine, name: str = "test-recorder") -> None:
        super().__init__(Recorder(engine, settings), settings, name)

    def __enter__(self) -> RecorderThread:
        self.thread.start()
        return self


@pytest.fixture
def recorder(settings: Settings, engine: sa.Engine) -> Iterator[RecorderThread]:
    with RecorderThread(settings, engine) as running:
        yield running


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, message: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own (so the test can stop and restart it).

    ``persistent`` (the default) keeps an append-only file fsynced on every write; without it the
    server keeps nothing, and a restart starts from an empty database.
    """

    def __init__(self, directory: Path, *, persistent: bool = True, password: str | None = None) -> None:
        self.port = free_port()
        self.persistent = persistent
        self.password = password
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; ./dev test installs it")
        config = self.dir / "redis.conf"  # the password in a file, so that `ps` never shows it
        config.write_text(f"requirepass {self.password}\n" if self.password else "")
        config.chmod(0o600)
        self.proc = subprocess.Popen(
            [
                binary,
                str(config),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.dir),
                *(
                    ["--appendonly", "yes", "--appendfsync", "always"]
                    if self.persistent
                    else ["--appendonly", "no"]
                ),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), timeout=10, message="private redis to start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: only what the append-only file holds survives."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def slack() -> Iterator[SlackLikeServer]:
    """A local HTTP server that answers like Slack's incoming webhooks."""
    server = SlackLikeServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hook() -> Iterator[SlackLikeServer]:
    """A second such server, for the generic signed webhook channel."""
    server = SlackLikeServer()
    server.start()
    yield server
    server.stop()


def run_cli(
    *args: str, env_extra: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the real ``fitstream`` command in a subprocess."""
    env = {**os.environ, **(env_extra or {})}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"fitstream {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        "FITSTREAM_REDIS_URL": settings.redis_url,
        "FITSTREAM_DATABASE_URL": settings.database_url,
        "FITSTREAM_HOME": str(settings.home),
        "FITSTREAM_STREAM": settings.stream,
    }


class WorkerProcess:
    """A real `fitstream worker` (Celery, prefork, one job per child) in its own process group."""

    def __init__(self, env: dict[str, str], queue: str, name: str, log_path: Path) -> None:
        self.env, self.queue, self.name, self.log_path = env, queue, name, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli.main",
                "worker",
                "-Q",
                self.queue,
                "-n",
                f"{self.name}@test",
                "--loglevel",
                "INFO",
            ],
            env={**os.environ, **self.env},
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its training child, as a machine crash would."""
        if self.proc is not None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc = None
        if hasattr(self, "log"):
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def job_env(settings: Settings, engine: sa.Engine) -> dict[str, str]:
    """Environment for CLI and worker processes of one test (its own stream, database, home)."""
    return {
        **settings_env(settings),
        "FITSTREAM_ALLOWED_MODULES": "examples,tests",
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


@pytest.fixture
def queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def start_worker(job_env: dict[str, str], queue_name: str, tmp_path: Path) -> Iterator:
    workers: list[WorkerProcess] = []

    def _start(name: str = "w1", **env: str) -> WorkerProcess:
        worker = WorkerProcess({**job_env, **env}, queue_name, name, tmp_path / f"worker-{name}.log").start()
        workers.append(worker)
        return worker

    yield _start
    for worker in workers:
        worker.stop()


# -- CI: a skip must be by design ----------------------------------------------------------------
# Under CI (CI=true, as `.ci/run` runs), a skipped test fails the run unless its other database
# variant ran: a test that does not depend on the database runs once (on SQLite or PostgreSQL) and
# skips the other variant. Any other skip (a missing tool, a missing privilege) means the suite did
# not test what it promises, and CI says which and fails.
_skipped: dict[str, str] = {}
_passed: set[str] = set()


#: The fault suite's ledger (``tests/faults``): one row per scenario, from the tests' reports.
_fault_rows: list[dict] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _fault_rows.extend(value for name, value in report.user_properties if name == "fault_row")
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped[report.nodeid] = reason.removeprefix("Skipped: ")
    elif report.when == "call" and report.passed:
        _passed.add(report.nodeid)


def _other_variant(nodeid: str) -> str | None:
    head, bracket, params = nodeid.partition("[")
    if not bracket:
        return None
    for this, other in (("sqlite", "postgresql"), ("postgresql", "sqlite")):
        parts = params.rstrip("]").split("-")
        if this in parts:
            return f"{head}[{'-'.join(other if p == this else p for p in parts)}]"
    return None


def unexpected_skips() -> dict[str, str]:
    return {nodeid: reason for nodeid, reason in _skipped.items() if _other_variant(nodeid) not in _passed}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the controller, which gets every report, decides
    unexpected = unexpected_skips()
    if not unexpected:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.section("skips that are not by design (CI fails on these)", red=True)
        for nodeid, reason in sorted(unexpected.items()):
            reporter.write_line(f"{nodeid}: {reason}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    """The fault suite's table: what each fault cost (``FITSTREAM_FAULT_REPORT=path.json`` writes it)."""
    if not _fault_rows:
        return
    terminalreporter.section("fault suite: what each fault cost")
    header = f"{'scenario':<56} {'published':>9} {'recorded':>9} {'lost':>5} {'dup':>4} {'dead':>5}  note"
    terminalreporter.write_line(header)
    rows = sorted(_fault_rows, key=lambda row: row["scenario"])
    for row in rows:
        terminalreporter.write_line(
            f"{row['scenario'][:56]:<56} {row['published']:>9} {row['recorded']:>9} {row['lost']:>5} "
            f"{row['duplicated']:>4} {row['dead_lettered']:>5}  {row['note']}"
        )
    report = os.environ.get("FITSTREAM_FAULT_REPORT")
    if report:
        import json

        Path(report).write_text(json.dumps(rows, indent=2))
