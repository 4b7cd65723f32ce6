"""Make sure the services Fitstream needs are answering; start private ones when not.

Used by ``./dev`` (the README's two commands). Prints what it did on stderr and,
on stdout, ``export`` lines for the URLs to use. Exits non-zero with a message
that says what to install or which URL to set when it cannot help.

    python scripts/services.py redis            # FITSTREAM_REDIS_URL
    python scripts/services.py redis postgres   # + FITSTREAM_TEST_POSTGRES_URL (tests)
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".fitstream" / "services"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_TEST_POSTGRES_URL = "postgresql://postgres:postgres@127.0.0.1:5432/test"


def say(message: str) -> None:
    print(f"[services] {message}", file=sys.stderr, flush=True)


def die(message: str) -> None:
    print(f"[services] error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


_apt_updated = False


def apt_install(*packages: str) -> bool:
    global _apt_updated
    if not is_root() or not shutil.which("apt-get"):
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        say("apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, stdout=subprocess.DEVNULL)
        _apt_updated = True
    say(f"apt-get install {' '.join(packages)}")
    result = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return result.returncode == 0


# -- Redis -----------------------------------------------------------------------------
def redis_ping(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "localhost", parts.port or 6379), timeout=timeout
        ) as sock:
            if parts.password:
                user = parts.username or "default"
                sock.sendall(f"AUTH {user} {parts.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary:
        return binary
    if apt_install("redis-server"):
        binary = shutil.which("redis-server")
        if binary:
            return binary
    die(
        "redis-server is not installed. Install it (Debian/Ubuntu: sudo apt-get install redis-server) "
        "or set FITSTREAM_REDIS_URL to a Redis that is running."
    )
    raise AssertionError


def ensure_redis(url: str) -> str:
    if redis_ping(url):
        say(f"Redis answers at {url}")
        return url
    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS:
        die(f"no Redis answers at {url}; start it there or set FITSTREAM_REDIS_URL to one that runs")
    binary = ensure_redis_binary()
    port = parts.port or 6379
    data = STATE / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    say(f"starting a private redis-server on 127.0.0.1:{port} (data in {data})")
    subprocess.run(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data),
            "--logfile",
            str(data / "redis.log"),
            "--pidfile",
            str(data / "redis.pid"),
        ],
        check=True,
    )
    for _ in range(50):
        if redis_ping(url):
            return url
        time.sleep(0.1)
    die(f"started redis-server but it does not answer at {url}; see {data / 'redis.log'}")
    raise AssertionError


# -- PostgreSQL ---------------------------------------------------------------------------
def pg_connect_ok(url: str) -> tuple[bool, str]:
    try:
        import psycopg
    except ImportError:
        return False, "psycopg is not installed in this environment"
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True, ""
    except Exception as exc:  # any failure means "not usable yet"
        return False, str(exc).strip()


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def as_postgres(*command: str) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", "postgres", "--"] if is_root() else []
    return subprocess.run([*prefix, *command], capture_output=True, text=True)


def ensure_postgres(url: str) -> str:
    ok, why = pg_connect_ok(url)
    if ok:
        say(f"PostgreSQL answers at {url.split('@')[-1]}")
        return url
    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS:
        die(f"cannot use PostgreSQL at {parts.hostname}: {why}")
    if not pg_bin("pg_ctl"):
        if not apt_install("postgresql"):
            die(
                "PostgreSQL is not installed. Install it (Debian/Ubuntu: sudo apt-get install postgresql) "
                "or set FITSTREAM_TEST_POSTGRES_URL to a server the tests may use."
            )
    clusters = sorted(glob.glob("/etc/postgresql/*/main"))
    if not clusters and shutil.which("pg_createcluster") and is_root():
        version = Path(pg_bin("pg_ctl") or "").parent.parent.name
        say(f"creating PostgreSQL {version} cluster 'main'")
        subprocess.run(["pg_createcluster", version, "main"], check=False, capture_output=True)
        clusters = sorted(glob.glob("/etc/postgresql/*/main"))
    if clusters and shutil.which("pg_ctlcluster"):
        version = Path(clusters[-1]).parent.name
        say(f"starting PostgreSQL cluster {version}/main")
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], capture_output=True
        )
    for _ in range(60):
        if (
            subprocess.run(
                [pg_bin("pg_isready") or "pg_isready", "-h", "127.0.0.1", "-p", str(parts.port or 5432)],
                capture_output=True,
            ).returncode
            == 0
        ):
            break
        time.sleep(0.5)
    ok, why = pg_connect_ok(url)
    if ok:
        return url
    # A fresh Debian cluster wants a password over TCP and has no 'test' database: set both up.
    user = parts.username or "postgres"
    password = parts.password or "postgres"
    database = (parts.path or "/test").lstrip("/") or "test"
    if is_root():
        say(f"configuring role {user!r} and database {database!r}")
        as_postgres("psql", "-c", f"ALTER USER {user} PASSWORD '{password}'")
        if user != "postgres":
            as_postgres("psql", "-c", f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{password}'")
        as_postgres("createdb", "-O", user, database)
    ok, why = pg_connect_ok(url)
    if not ok:
        die(
            f"PostgreSQL at {parts.hostname}:{parts.port or 5432} is not usable: {why}. "
            "Set FITSTREAM_TEST_POSTGRES_URL to a database the tests may use."
        )
    return url


def ensure_compose_validator() -> None:
    """Debian's docker-compose validates docker-compose.yml (``config``) without an engine."""
    if shutil.which("docker-compose"):
        return
    if not apt_install("docker-compose"):
        say(
            "docker-compose is not installed; the compose-file test will be skipped "
            "(Debian/Ubuntu: sudo apt-get install docker-compose)"
        )


def ensure_browser() -> None:
    """Debian's chromium for the dashboard's browser tests (Playwright drives it; nothing is downloaded)."""
    if shutil.which("chromium"):
        return
    if not apt_install("chromium"):
        die(
            "chromium is not installed and could not be installed; the dashboard's browser tests need it "
            "(Debian/Ubuntu: sudo apt-get install chromium)"
        )


def main(argv: list[str]) -> None:
    wanted = set(argv) or {"redis"}
    exports = {}
    redis_url = os.environ.get("FITSTREAM_REDIS_URL", DEFAULT_REDIS_URL)
    if "redis" in wanted:
        exports["FITSTREAM_REDIS_URL"] = ensure_redis(redis_url)
    if "redis-binary" in wanted:
        ensure_redis_binary()
    if "postgres" in wanted:
        exports["FITSTREAM_TEST_POSTGRES_URL"] = ensure_postgres(
            os.environ.get("FITSTREAM_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES_URL)
        )
    if "compose" in wanted:
        ensure_compose_validator()
    if "browser" in wanted:
        ensure_browser()
    for key, value in exports.items():
        print(f"export {key}='{value}'")


if __name__ == "__main__":
    main(sys.argv[1:])
