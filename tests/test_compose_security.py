"""Issue 10: the production compose stack is secure by default.

Publishes only what a user must reach, bound to 127.0.0.1 unless FITSTREAM_BIND_ADDRESS says
otherwise; every password comes from a secret file (none has a default, none is in the file or on a
command line); the Fitstream services use a PostgreSQL role that is not the superuser; Flower asks
for a password; and compose refuses to start while the secrets are not given.

The file is checked as written (YAML) and as ``docker-compose config`` renders it, and the scripts
the containers run (Redis' entrypoint, PostgreSQL's init script, Flower's entrypoint) are run here
against a real redis-server and a real PostgreSQL cluster.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml

from pipeline.bus import EventStream
from pipeline.config import Settings
from pipeline.db.readonly import READER_ROLE
from tests.conftest import REPO, free_port, run_cli, wait_for

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKER_DIR = REPO / "docker"
LOOPBACK = "127.0.0.1"
#: Where a published port must not listen unless the user said so.
WILDCARD_ADDRESSES = {"", "0.0.0.0", "::", "[::]"}
#: Environment names that would hold a secret itself (their *_FILE twins name a file instead).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY")
#: user:password@ in a URL.
URL_CREDENTIALS = re.compile(r"://[^/\s:@]*:[^/\s@]+@")


def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def secret_names() -> list[str]:
    return list(raw_compose()["secrets"])


def write_secrets(directory: Path) -> dict[str, str]:
    """A fresh random value in each secret file the compose file names."""
    directory.mkdir(parents=True, exist_ok=True)
    values = {name: secrets.token_hex(16) for name in secret_names()}
    for name, value in values.items():
        (directory / name).write_text(value + "\n")
    return values


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def mounted_secrets(service: dict[str, Any]) -> set[str]:
    return {item["source"] if isinstance(item, dict) else item for item in service.get("secrets") or []}


def fitstream_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run Fitstream's image (built from this repository)."""
    return {name: service for name, service in compose["services"].items() if "build" in service}


def database_user(service: dict[str, Any]) -> str:
    from sqlalchemy.engine import make_url

    return make_url(environment(service)["FITSTREAM_DATABASE_URL"]).username


# -- the file as written -------------------------------------------------------------------------
def test_only_redis_flower_and_minio_publish_ports_and_all_on_the_bind_address():
    published = {
        name: service["ports"] for name, service in raw_compose()["services"].items() if service.get("ports")
    }
    assert set(published) == {"redis", "flower", "minio"}, (
        "PostgreSQL and Fitstream's services stay on the compose network"
    )
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("${FITSTREAM_BIND_ADDRESS:-127.0.0.1}:"), (
                f"{name} publishes {port!r} elsewhere"
            )


def test_no_variable_gives_a_secret_a_default_value():
    text = COMPOSE_FILE.read_text()
    for variable, default in re.findall(r"\$\{(\w+):?-([^}]*)\}", text):
        assert not (SECRET_NAME.search(variable) and default), f"${{{variable}}} defaults to a value"
    assert not URL_CREDENTIALS.search(text), "a URL in docker-compose.yml holds credentials"


def test_every_password_comes_from_a_secret_the_service_mounts():
    compose = raw_compose()
    declared = set(compose["secrets"])
    for name, service in compose["services"].items():
        env = environment(service)
        for key, value in env.items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert value in ("", f"${{{key}:-}}"), f"{name}: {key} is given in the compose file"
            if key.endswith("_FILE") and SECRET_NAME.search(key):
                secret = value.removeprefix("/run/secrets/")
                assert secret in declared and secret in mounted_secrets(service), (
                    f"{name}: {key}={value} is no secret it mounts"
                )
    for name, service in fitstream_services(compose).items():
        env = environment(service)
        assert env["FITSTREAM_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password", name
        assert env["FITSTREAM_DATABASE_PASSWORD_FILE"] == "/run/secrets/postgres_app_password", name


def test_the_fitstream_services_use_a_database_role_that_is_not_the_superuser():
    compose = raw_compose()
    postgres = environment(compose["services"]["postgres"])
    users = {database_user(service) for service in fitstream_services(compose).values()}
    assert users == {"fitstream"}
    assert postgres["POSTGRES_USER"] not in users
    assert "POSTGRES_PASSWORD_FILE" in postgres and "POSTGRES_PASSWORD" not in postgres

    init_mounts = [
        v for v in compose["services"]["postgres"]["volumes"] if "/docker-entrypoint-initdb.d/" in v
    ]
    assert init_mounts == ["./docker/postgres-init.sql:/docker-entrypoint-initdb.d/10-fitstream-roles.sql:ro"]
    script = " ".join((DOCKER_DIR / "postgres-init.sql").read_text().split())
    for role in ("fitstream", READER_ROLE):
        assert f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION" in script
    assert "OWNER TO fitstream" in script and "ALTER SCHEMA public OWNER TO fitstream" in script


def test_redis_and_flower_read_their_passwords_from_files():
    services = raw_compose()["services"]
    redis_service = services["redis"]
    assert redis_service["entrypoint"] == ["sh", "/opt/fitstream/redis-entrypoint.sh"]
    assert "redis_password" in mounted_secrets(redis_service)
    assert "command" not in redis_service, "the entrypoint runs redis-server on the config it writes"
    assert "REDISCLI_AUTH" in redis_service["healthcheck"]["test"][1], "the health check must authenticate"

    flower = services["flower"]
    assert flower["entrypoint"] == ["python", "/opt/fitstream/flower-entrypoint.py"]
    assert mounted_secrets(flower) == {"redis_password", "flower_password"}
    assert environment(flower)["FITSTREAM_FLOWER_PASSWORD_FILE"] == "/run/secrets/flower_password"
    assert not any("basic" in part or "broker" in part for part in flower["command"])


# -- the file as docker-compose renders it ---------------------------------------------------------
def compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose is not installed (./dev test installs it on Debian)")
    return found


def render(extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    """``docker-compose config`` with only PATH, HOME and ``extra_env`` in its environment, every
    profile included, and no .env file (the project directory is a temporary copy)."""
    with tempfile.TemporaryDirectory() as project:
        shutil.copy(COMPOSE_FILE, Path(project) / "docker-compose.yml")
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **extra_env}
        return subprocess.run(
            [compose_binary(), "-f", "docker-compose.yml", "--profile", "s3", "--profile", "tools", "config"],
            capture_output=True,
            text=True,
            cwd=project,
            env=env,
            timeout=60,
        )


def published_host_ips(service: dict[str, Any]) -> list[str]:
    """Host addresses of a rendered service's published ports (docker-compose v1 renders
    ``ip:published:target/proto`` strings, Compose v2 mappings with ``host_ip``)."""
    found = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            found.append(str(port.get("host_ip") or ""))
        else:
            parts = str(port).rsplit(":", 2)
            found.append(parts[0] if len(parts) == 3 else "")
    return found


@pytest.fixture
def secrets_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    directory = tmp_path / "secrets"
    return directory, write_secrets(directory)


def test_the_rendered_stack_publishes_on_loopback_unless_told_otherwise(secrets_dir):
    directory, _values = secrets_dir
    result = render({"FITSTREAM_SECRETS_DIR": str(directory)})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    addresses = {
        name: published_host_ips(service) for name, service in services.items() if service.get("ports")
    }
    assert set(addresses) == {"redis", "flower", "minio"}
    for name, ips in addresses.items():
        assert all(ip == LOOPBACK for ip in ips), f"{name} publishes on {ips}"
        assert not WILDCARD_ADDRESSES & set(ips)

    chosen = render({"FITSTREAM_SECRETS_DIR": str(directory), "FITSTREAM_BIND_ADDRESS": "10.1.2.3"})
    assert chosen.returncode == 0, chosen.stderr
    assert set(published_host_ips(yaml.safe_load(chosen.stdout)["services"]["flower"])) == {"10.1.2.3"}


def test_the_rendered_stack_holds_no_password(secrets_dir):
    directory, values = secrets_dir
    result = render({"FITSTREAM_SECRETS_DIR": str(directory)})
    assert result.returncode == 0, result.stderr
    for name, value in values.items():
        assert value not in result.stdout, f"the content of the secret {name} reached the rendered config"
    config = yaml.safe_load(result.stdout)
    assert {spec["file"] for spec in config["secrets"].values()} == {str(directory / name) for name in values}
    for name, service in config["services"].items():
        for key, value in environment(service).items():
            assert not URL_CREDENTIALS.search(value), f"{name}: {key} holds credentials"
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert value == "", f"{name}: {key} has a value without the user setting one"
        words = " ".join(str(w) for key in ("command", "entrypoint") for w in (service.get(key) or []))
        assert (
            "requirepass" not in words and "basic_auth" not in words and not URL_CREDENTIALS.search(words)
        ), name
    postgres = environment(config["services"]["postgres"])
    assert (
        {database_user(s) for s in fitstream_services(config).values()}
        == {"fitstream"}
        != {postgres["POSTGRES_USER"]}
    )


def test_compose_refuses_to_start_without_the_secrets():
    result = render({})
    assert result.returncode != 0
    assert "FITSTREAM_SECRETS_DIR" in result.stderr and "secrets/README.md" in result.stderr


# -- Redis' entrypoint, run against a real redis-server --------------------------------------------
def start_redis_entrypoint(tmp_path: Path, password_file: Path) -> tuple[subprocess.Popen, int, Path]:
    """docker/redis-entrypoint.sh, with the image's docker-entrypoint.sh replaced by one that notes
    its arguments in ``args`` and runs redis-server on them (plus a private port and directory)."""
    port = free_port()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "docker-entrypoint.sh"
    fake.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/args\nshift\n'
        f'exec redis-server "$@" --port {port} --bind 127.0.0.1 --dir {tmp_path}\n'
    )
    fake.chmod(0o755)
    conf = tmp_path / "etc" / "fitstream.conf"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FITSTREAM_REDIS_PASSWORD_FILE": str(password_file),
        "FITSTREAM_REDIS_CONF": str(conf),
    }
    proc = subprocess.Popen(
        ["sh", str(DOCKER_DIR / "redis-entrypoint.sh")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port, conf


def _refuses_without_password(port: int) -> bool:
    try:
        redis.Redis(host="127.0.0.1", port=port).ping()
    except redis.AuthenticationError:
        return True
    except redis.ConnectionError:
        return False
    raise AssertionError("Redis answered without a password")


def test_redis_requires_the_secret_and_keeps_it_off_its_command_line(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; ./dev test installs it")
    password = secrets.token_hex(16)
    password_file = tmp_path / "redis_password"
    password_file.write_text(password + "\n")
    proc, port, conf = start_redis_entrypoint(tmp_path, password_file)
    try:
        wait_for(
            lambda: _refuses_without_password(port), timeout=10, message="redis from the entrypoint to start"
        )
        settings = Settings(
            redis_url=f"redis://127.0.0.1:{port}/0", redis_password_file=password_file, home=tmp_path
        )
        stream = EventStream(settings=settings)
        assert stream.client.ping()
        config = stream.client.config_get("*")
        assert (config["appendonly"], config["maxmemory-policy"]) == ("yes", "noeviction")
        # What the container's command line (`ps`, `docker inspect`) would show: redis-server and its config.
        assert (tmp_path / "args").read_text().split() == ["redis-server", str(conf)]
        assert password not in conf.read_text()
        assert conf.stat().st_mode & 0o077 == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_refuses_to_start_without_its_secret(tmp_path):
    empty = tmp_path / "redis_password"
    empty.write_text("")
    proc, _port, _conf = start_redis_entrypoint(tmp_path, empty)
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert "FITSTREAM_REDIS_PASSWORD_FILE" in err and "secrets/README.md" in err


# -- PostgreSQL's init script, run against a real cluster ------------------------------------------
def postgres_binary(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    on_path = str(found[-1]) if found else shutil.which(name)
    if on_path is None:
        pytest.fail(f"PostgreSQL's {name} is not installed; ./dev test installs PostgreSQL")
    return on_path


class PasswordPostgres:
    """A private PostgreSQL cluster that, like the postgres image, trusts its local socket and asks
    for a password (scram-sha-256) over TCP. Runs as ``postgres`` when the tests run as root."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fitstream-pg-secrets-"))
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")

    def _as_postgres(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{' '.join(command)} failed: {result.stderr or result.stdout}"

    def start(self) -> None:
        data = str(self.dir / "data")
        self._as_postgres(
            postgres_binary("initdb"),
            "-D",
            data,
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            postgres_binary("pg_ctl"), "-D", data, "-o", options, "-l", str(self.dir / "log"), "-w", "start"
        )

    def psql(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """psql as the superuser over the socket, as the image runs its init scripts."""
        command = [
            postgres_binary("psql"),
            "-v",
            "ON_ERROR_STOP=1",
            "--username",
            "postgres",
            "--no-password",
            "--no-psqlrc",
            "-h",
            str(self.dir),
            "-p",
            str(self.port),
            *args,
        ]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
        )

    def destroy(self) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [
                *prefix,
                postgres_binary("pg_ctl"),
                "-D",
                str(self.dir / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def password_postgres() -> Iterator[PasswordPostgres]:
    server = PasswordPostgres()
    server.start()
    yield server
    server.destroy()


def test_postgres_init_creates_a_non_superuser_owner_and_the_reader(password_postgres, tmp_path):
    pg = password_postgres
    assert pg.psql("-d", "postgres", "-c", "CREATE DATABASE fitstream").returncode == 0  # POSTGRES_DB
    app_file, reader_file = tmp_path / "postgres_app_password", tmp_path / "postgres_reader_password"
    reader_file.write_text(secrets.token_hex(16) + "\n")
    init = ["--dbname", "fitstream", "-f", str(DOCKER_DIR / "postgres-init.sql")]
    files = {
        "FITSTREAM_DATABASE_PASSWORD_FILE": str(app_file),
        "FITSTREAM_READER_DATABASE_PASSWORD_FILE": str(reader_file),
    }

    refused = pg.psql(*init, env=files)  # the app's secret file does not exist yet
    assert refused.returncode != 0 and "no password for the role fitstream" in refused.stderr

    app_file.write_text(secrets.token_hex(16) + "\n")
    done = pg.psql(*init, env=files)
    assert done.returncode == 0, done.stderr
    roles = pg.psql(
        "-d",
        "fitstream",
        "-At",
        "-c",
        "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles "
        "WHERE rolname IN ('fitstream', 'fitstream_reader') ORDER BY rolname",
    ).stdout.split()
    assert roles == ["fitstream|f|f|f|f|f", "fitstream_reader|f|f|f|f|f"]

    env = {
        "FITSTREAM_DATABASE_URL": f"postgresql+psycopg://fitstream@127.0.0.1:{pg.port}/fitstream",
        "FITSTREAM_DATABASE_PASSWORD_FILE": str(app_file),
        "FITSTREAM_HOME": str(tmp_path / "home"),
    }
    run_cli("db", "upgrade", env_extra=env)  # the migrations need no superuser
    owners = pg.psql(
        "-d",
        "fitstream",
        "-At",
        "-c",
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public' "
        "UNION SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public' "
        "UNION SELECT datdba::regrole::text FROM pg_database WHERE datname = 'fitstream'",
    ).stdout.split()
    assert owners == ["fitstream"]

    rows = run_cli(
        "sql",
        "SELECT count(*) AS runs FROM runs",
        "--json",
        env_extra={**env, "FITSTREAM_READER_DATABASE_PASSWORD_FILE": str(reader_file)},
    ).stdout
    assert json.loads(rows) == [{"runs": 0}]

    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"postgresql://fitstream@127.0.0.1:{pg.port}/fitstream", connect_timeout=5)


# -- Flower's entrypoint ---------------------------------------------------------------------------
def run_flower_entrypoint(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """docker/flower-entrypoint.py with a stand-in ``celery`` that prints what Flower would get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    celery = bin_dir / "celery"
    celery.write_text('#!/bin/sh\nprintf \'%s\\n\' "$CELERY_BROKER_URL" "$FLOWER_BASIC_AUTH" "$*"\n')
    celery.chmod(0o755)
    return subprocess.run(
        [sys.executable, str(DOCKER_DIR / "flower-entrypoint.py"), "--port=5555"],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "FITSTREAM_BROKER_URL": "redis://redis:6379/0",
            **env,
        },
    )


def test_flower_gets_basic_auth_and_its_brokers_password_from_files(tmp_path):
    redis_file, flower_file = tmp_path / "redis_password", tmp_path / "flower_password"
    redis_file.write_text("r/e@dis\n")
    flower_file.write_text("flower-pw\n")
    result = run_flower_entrypoint(
        tmp_path,
        {
            "FITSTREAM_REDIS_PASSWORD_FILE": str(redis_file),
            "FITSTREAM_FLOWER_PASSWORD_FILE": str(flower_file),
        },
    )
    assert result.returncode == 0, result.stderr
    broker, basic_auth, args = result.stdout.splitlines()
    assert redis.connection.parse_url(broker) == {
        "host": "redis",
        "port": 6379,
        "db": 0,
        "password": "r/e@dis",
    }
    assert basic_auth == "admin:flower-pw"
    assert args == "flower --port=5555"

    missing = run_flower_entrypoint(
        tmp_path,
        {
            "FITSTREAM_REDIS_PASSWORD_FILE": str(redis_file),
            "FITSTREAM_FLOWER_PASSWORD_FILE": str(tmp_path / "nowhere"),
        },
    )
    assert missing.returncode != 0 and "FITSTREAM_FLOWER_PASSWORD_FILE" in missing.stderr


def test_the_readmes_secrets_snippet_creates_every_secret_the_default_stack_mounts():
    readme = (REPO / "README.md").read_text()
    snippet = readme.split("## Production shape", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    created = set(re.search(r"for s in (.*?); do", snippet, re.S).group(1).replace("\\", " ").split())
    compose = raw_compose()
    default_stack = {
        name: service for name, service in compose["services"].items() if not service.get("profiles")
    }
    needed = set().union(*(mounted_secrets(service) for service in default_stack.values()))
    assert created == needed, f"README creates {sorted(created)}; `docker compose up` needs {sorted(needed)}"


def test_git_ignores_the_env_file_and_the_secret_files():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(
        ["git", "check-ignore", ".env", "secrets/redis_password", "secrets/flower_password"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.stdout.split() == [".env", "secrets/redis_password", "secrets/flower_password"]
    kept = subprocess.run(
        ["git", "check-ignore", "secrets/README.md", "secrets/.gitignore"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert kept.stdout == "", "the secrets folder's README and .gitignore are committed"
