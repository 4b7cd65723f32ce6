"""Issue 10: passwords from files (Docker / Kubernetes secrets). FITSTREAM_REDIS_PASSWORD_FILE,
FITSTREAM_DATABASE_PASSWORD_FILE and FITSTREAM_READER_DATABASE_PASSWORD_FILE put the password into
the URL every part of Fitstream uses (event stream, Celery broker, history database, read-only
role); an unusable file is refused with a message that names the variable and never the password."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import make_url

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.config import Settings
from pipeline.db.readonly import reader_url
from pipeline.errors import ConfigurationError, StreamUnavailableError
from tests.conftest import PrivateRedis, run_cli, wait_for

PASSWORD = "p@ss:w/rd %?#"  # every character a URL would otherwise misread
FILE_VARIABLES = (
    "FITSTREAM_REDIS_PASSWORD_FILE",
    "FITSTREAM_DATABASE_PASSWORD_FILE",
    "FITSTREAM_READER_DATABASE_PASSWORD_FILE",
)


@pytest.fixture(autouse=True)
def _no_password_files_from_outside(monkeypatch):
    for variable in (*FILE_VARIABLES, "FITSTREAM_BROKER_URL", "FITSTREAM_READER_DATABASE_URL"):
        monkeypatch.delenv(variable, raising=False)


def secret_file(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


def test_each_password_file_goes_into_the_url_it_belongs_to(tmp_path, monkeypatch):
    monkeypatch.setenv("FITSTREAM_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("FITSTREAM_REDIS_PASSWORD_FILE", str(secret_file(tmp_path, "redis", PASSWORD + "\n")))
    monkeypatch.setenv("FITSTREAM_DATABASE_URL", "postgresql+psycopg://fitstream@postgres:5432/fitstream")
    monkeypatch.setenv(
        "FITSTREAM_DATABASE_PASSWORD_FILE", str(secret_file(tmp_path, "app", "app-" + PASSWORD + "\r\n"))
    )
    monkeypatch.setenv(
        "FITSTREAM_READER_DATABASE_PASSWORD_FILE", str(secret_file(tmp_path, "reader", "reader-" + PASSWORD))
    )
    settings = Settings()

    assert redis.connection.parse_url(settings.redis_url) == {
        "host": "redis",
        "port": 6379,
        "db": 0,
        "password": PASSWORD,
    }
    assert settings.celery_broker_url == settings.redis_url
    database = make_url(settings.database_url)
    assert (database.username, database.password, database.host) == (
        "fitstream",
        "app-" + PASSWORD,
        "postgres",
    )
    reader = make_url(settings.reader_database_url)
    assert (reader.username, reader.password, reader.host) == (
        "fitstream_reader",
        "reader-" + PASSWORD,
        "postgres",
    )
    assert database.database == reader.database == "fitstream"


def test_an_explicit_reader_url_and_an_acl_user_keep_their_user_names(tmp_path):
    settings = Settings(
        redis_url="redis://fitstream@redis:6379/0",
        redis_password_file=secret_file(tmp_path, "redis", "r"),
        database_url="postgresql+psycopg://fitstream@db/fitstream",
        reader_database_url="postgresql://analyst@replica:5433/fitstream?sslmode=verify-full",
        reader_database_password_file=secret_file(tmp_path, "reader", "s"),
    )
    assert settings.redis_url == "redis://fitstream:r@redis:6379/0"
    assert settings.reader_database_url == "postgresql://analyst:s@replica:5433/fitstream?sslmode=verify-full"
    assert settings.database_url == "postgresql+psycopg://fitstream@db/fitstream"  # no file, no password


def test_the_broker_gets_the_password_only_when_it_is_the_same_redis(tmp_path):
    password_file = secret_file(tmp_path, "redis", "pw")
    same = Settings(
        redis_url="redis://redis:6379/0", broker_url="redis://redis/1", redis_password_file=password_file
    )
    assert same.celery_broker_url == "redis://:pw@redis/1"
    other = Settings(
        redis_url="redis://redis:6379/0",
        broker_url="redis://broker:6379/0",
        redis_password_file=password_file,
    )
    assert other.celery_broker_url == "redis://broker:6379/0"
    own = Settings(
        redis_url="redis://redis:6379/0",
        broker_url="redis://:its-own@redis:6379/1",
        redis_password_file=password_file,
    )
    assert own.celery_broker_url == "redis://:its-own@redis:6379/1"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("\n", "is empty"),
        ("first\nsecond\n", "more than one line"),
        ("directory", "cannot read"),
    ],
)
def test_an_unusable_file_is_refused_naming_the_variable_not_the_password(
    tmp_path, monkeypatch, content, expected
):
    path = tmp_path / "redis_password"
    if content == "directory":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    monkeypatch.setenv("FITSTREAM_REDIS_PASSWORD_FILE", str(path))
    with pytest.raises(ConfigurationError, match=expected) as caught:
        Settings()
    assert "FITSTREAM_REDIS_PASSWORD_FILE" in str(caught.value) and str(path) in str(caught.value)
    assert "second" not in str(caught.value)


def test_a_path_this_process_cannot_read_is_refused(tmp_path):
    # Root reads every file whatever its mode (CI runs as root), but no process reads a directory:
    # the same OSError path as a file without read permission.
    path = tmp_path / "redis_password"
    path.mkdir()
    with pytest.raises(ConfigurationError, match="FITSTREAM_REDIS_PASSWORD_FILE: cannot read"):
        Settings(redis_password_file=path)


def test_a_url_that_already_holds_a_password_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="FITSTREAM_REDIS_URL already holds a password") as caught:
        Settings(
            redis_url="redis://:in-the-url@redis:6379/0",
            redis_password_file=secret_file(tmp_path, "r", "in-the-file"),
        )
    assert "in-the-url" not in str(caught.value) and "in-the-file" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="FITSTREAM_READER_DATABASE_URL already holds a password"):
        Settings(
            database_url="postgresql+psycopg://fitstream@db/fitstream",
            reader_database_url="postgresql://r:x@db/fitstream",
            reader_database_password_file=secret_file(tmp_path, "reader", "y"),
        )


def test_a_sqlite_history_takes_no_password_file(tmp_path):
    expected = "FITSTREAM_DATABASE_PASSWORD_FILE is set, but FITSTREAM_DATABASE_URL is a SQLite file"
    with pytest.raises(ConfigurationError, match=expected):
        Settings(
            database_url=f"sqlite:///{tmp_path / 'h.db'}",
            database_password_file=secret_file(tmp_path, "db", "pw"),
        )


def test_passwords_stay_out_of_the_settings_repr(tmp_path):
    settings = Settings(
        redis_password_file=secret_file(tmp_path, "r", "redis-secret"),
        database_url="postgresql+psycopg://fitstream@db/fitstream",
        database_password_file=secret_file(tmp_path, "d", "db-secret"),
    )
    assert "redis-secret" in settings.redis_url and "db-secret" in settings.database_url
    assert "secret" not in repr(settings) and "secret" not in str(settings)


def test_the_readers_default_url_never_carries_the_owners_password():
    # The reader connects as another role: the owner's password has no business there.
    assert reader_url("postgresql+psycopg://fitstream:owner-pw@db:5432/fitstream?sslmode=require") == (
        "postgresql://fitstream_reader@db:5432/fitstream?sslmode=require"
    )


def test_the_cli_reports_a_missing_file_in_one_line(tmp_path):
    missing = tmp_path / "nowhere" / "redis_password"
    result = run_cli("runs", env_extra={"FITSTREAM_REDIS_PASSWORD_FILE": str(missing)}, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "FITSTREAM_REDIS_PASSWORD_FILE" in " ".join(result.stderr.split())


# -- a real Redis that requires a password -------------------------------------------------
class PasswordRedis(PrivateRedis):
    """A private redis-server with ``requirepass``; ``url`` names no password."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.password = "s3cret:/@ word"
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; ./dev test installs it")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--requirepass",
                self.password,
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        wait_for(lambda: _answers(client), timeout=10, message="password-protected redis to start")


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def password_redis(tmp_path: Path):
    server = PasswordRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def _event() -> ev.RunQueued:
    return ev.build(ev.RunQueued, run_id="r" * 32, seq=0, name="secret-files", queue="gpu")


def test_publishing_to_a_redis_that_requires_a_password(password_redis, tmp_path, monkeypatch):
    monkeypatch.setenv("FITSTREAM_REDIS_URL", password_redis.url)
    password_file = secret_file(tmp_path, "redis_password", password_redis.password + "\n")
    monkeypatch.setenv("FITSTREAM_REDIS_PASSWORD_FILE", str(password_file))
    settings = Settings(home=tmp_path / "home", stream="fitstream:secret-files")

    assert len(EventStream(settings=settings).publish([_event()])) == 1
    admin = redis.Redis(host="127.0.0.1", port=password_redis.port, password=password_redis.password)
    assert admin.xlen("fitstream:secret-files") == 1

    from workers.celery_app import make_app  # the Celery broker authenticates with the same password

    with make_app(settings).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)


def test_publishing_without_the_password_is_refused_clearly(password_redis, tmp_path):
    settings = Settings(redis_url=password_redis.url, home=tmp_path / "home", stream="fitstream:secret-files")
    with pytest.raises(StreamUnavailableError, match="Authentication required"):
        EventStream(settings=settings).publish([_event()])

    from kombu.exceptions import OperationalError

    from workers.celery_app import make_app

    with pytest.raises(OperationalError, match="Authentication required"):
        with make_app(settings).connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
