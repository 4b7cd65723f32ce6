"""Starts Flower with its secrets read from files (compose secrets), so that none of them is in the
compose file, in ``docker inspect`` or on a command line:

- ``FITSTREAM_REDIS_PASSWORD_FILE``: the password of the Celery broker ``FITSTREAM_BROKER_URL``;
- ``FITSTREAM_FLOWER_PASSWORD_FILE``: Flower's own basic-auth password, for ``FITSTREAM_FLOWER_USER``.

Flower reads them from the environment it is started with (``CELERY_BROKER_URL``,
``FLOWER_BASIC_AUTH``). Arguments are passed on to ``celery flower``.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import quote, urlsplit, urlunsplit


def secret(variable: str) -> str:
    """The one-line secret in the file that ``variable`` names, without its line ending."""
    path = os.environ.get(variable, "")
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().replace("\r", "").replace("\n", "")
    except OSError as exc:
        sys.exit(
            f"flower: {variable} ({path!r}) cannot be read: {exc.strerror or exc}; see secrets/README.md"
        )
    if not value:
        sys.exit(f"flower: {variable} ({path!r}) is empty; see secrets/README.md")
    return value


def broker_url(url: str, password: str) -> str:
    """``url`` with ``password`` in it, percent-encoded (kombu decodes it)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f":{quote(password, safe='')}@{host}"))


def main() -> None:
    user = os.environ.get("FITSTREAM_FLOWER_USER") or "admin"
    password = secret("FITSTREAM_FLOWER_PASSWORD_FILE")
    if "," in password or ":" in user:
        sys.exit(
            "flower: FITSTREAM_FLOWER_PASSWORD_FILE must not hold a ',' (Flower splits on it), nor the user a ':'"
        )
    os.environ["CELERY_BROKER_URL"] = broker_url(
        os.environ.get("FITSTREAM_BROKER_URL", "redis://redis:6379/0"),
        secret("FITSTREAM_REDIS_PASSWORD_FILE"),
    )
    os.environ["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
    os.execvp("celery", ["celery", "flower", *sys.argv[1:]])


if __name__ == "__main__":
    main()
