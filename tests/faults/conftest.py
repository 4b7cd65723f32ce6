"""The fault suite's own tools: a PostgreSQL cluster a test may restart, and the ledger.

Each scenario in ``tests/faults/`` breaks one real part while events flow (a SIGKILL, a database
restart, revoked grants, Redis restarted with or without its data, a webhook receiver that fails)
and then counts, from the real stream and the real database, what was published, recorded, lost,
duplicated and dead-lettered. The counts are printed as one table at the end of the run::

    ./dev test tests/faults -q

Every scenario stops what it started (its own servers, processes and threads) and is bounded in time
by the ``wait_for`` deadlines it uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.bus import EventStream
from tests.conftest import free_port, wait_for
from tests.stream_helpers import RECORDED_EVENT_COUNT, RECORDED_EVENT_IDS


@dataclass(frozen=True)
class FaultRow:
    """One scenario's outcome, counted from the stream and the database after the fault."""

    scenario: str
    published: int
    recorded: int
    lost: int
    duplicated: int
    dead_lettered: int
    note: str = ""


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Iterator[list[FaultRow]]:
    """Append the scenario's FaultRow; ``tests/conftest.py`` prints the table at the end of the session.
    The rows travel in the test's report (``user_properties``), so that under pytest-xdist the
    controller, which prints the table, gets the rows its workers counted."""
    rows: list[FaultRow] = []
    yield rows
    request.node.user_properties.extend(("fault_row", asdict(row)) for row in rows)


def count_recorded(
    engine: sa.Engine, stream: EventStream, scenario: str, published_ids: Iterable[str], note: str = ""
) -> FaultRow:
    """Count a stream-to-SQL scenario: each published event id against the ``events`` table.

    ``recorded`` counts distinct ids found, ``duplicated`` the rows beyond one per event (in
    ``events`` and per run and epoch in ``epochs``), ``dead_lettered`` the dead-letter stream.
    """
    wanted = set(published_ids)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(RECORDED_EVENT_IDS)).scalars().all()
        epoch_repeats = conn.execute(
            sa.text("SELECT count(*) - count(DISTINCT run_id || ':' || CAST(epoch AS VARCHAR)) FROM epochs")
        ).scalar()
    found = [row for row in rows if row in wanted]
    dead = stream.client.xlen(stream.dead_letter_stream)
    return FaultRow(
        scenario=scenario,
        published=len(wanted),
        recorded=len(set(found)),
        lost=len(wanted - set(found)),
        duplicated=(len(found) - len(set(found))) + int(epoch_repeats or 0),
        dead_lettered=int(dead),
        note=note,
    )


def postgres_binary(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    on_path = shutil.which(name)
    if on_path is None:
        pytest.fail(f"PostgreSQL's {name} is not installed; ./dev test installs PostgreSQL")
    return on_path


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, so that the test can restart it.

    Runs as the ``postgres`` user when the tests run as root (PostgreSQL refuses root), with its
    data and socket in a fresh directory and trust authentication on 127.0.0.1 only.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fitstream-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed: {result.stderr or result.stdout}")
        return result

    def init(self) -> PrivatePostgres:
        self._run(
            postgres_binary("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.start()
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            postgres_binary("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "server.log"),
            "-w",
            "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run(postgres_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)
            self.running = False

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().init()
    yield server
    server.destroy()


def wait_recorded(engine: sa.Engine, count: int, timeout: float = 120.0) -> None:
    def done() -> bool:
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(RECORDED_EVENT_COUNT)).scalar() >= count
        except sa.exc.DBAPIError:
            return False

    wait_for(done, timeout=timeout, interval=0.2, message=f"{count} events recorded")
