"""What every channel shares: the message, the HTTP session with retries, rate limits, masking.

HTTP retries come from urllib3's ``Retry`` behind requests (exponential backoff with
jitter, ``Retry-After`` honoured on 429/503), never from a hand-written sleep loop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

#: (connect, read) timeouts for one HTTP attempt.
TIMEOUT_S = (3.05, 10.0)


@dataclass(frozen=True)
class AlertMessage:
    """One alert to deliver: what happened, to which run, and its idempotency key."""

    key: str
    rule: str
    run_id: str
    run_name: str | None
    state: str  # firing | resolved
    severity: str
    summary: str
    value: float | None = None
    threshold: float | None = None
    epoch: int | None = None
    event_ts: float | None = None  # when the event that decided this alert happened (Unix time)
    test: bool = False


class DeliveryError(Exception):
    """A channel could not deliver a message (after its HTTP retries). Retryable later."""


class Channel(Protocol):
    name: str

    def send(self, message: AlertMessage) -> None:
        """Deliver ``message`` or raise :class:`DeliveryError`."""


def http_session(*, total: int = 4, backoff_factor: float = 0.5) -> requests.Session:
    """A pooled session whose POSTs are retried on connection errors, 429 and 5xx."""
    retry = Retry(
        total=total,
        connect=total,
        read=1,
        status=total,
        backoff_factor=backoff_factor,
        backoff_jitter=0.2,
        backoff_max=10,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"POST"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=8)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class RateLimiter:
    """At most ``per_minute`` sends per channel (a token bucket); waits, never drops."""

    def __init__(self, per_minute: int) -> None:
        self.interval = 60.0 / per_minute
        self.capacity = max(1.0, per_minute / 6)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) / self.interval)
            self.updated = now
            if self.tokens < 1:
                time.sleep((1 - self.tokens) * self.interval)
                self.tokens = 1
                self.updated = time.monotonic()
            self.tokens -= 1


class SecretMasker(logging.Filter):
    """Masks every registered secret in log records (urllib3 logs the URL path it retries,
    and a Slack webhook's token is in that path)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            masked = mask(text, sorted(self.secrets, key=len, reverse=True))
            if masked != text:
                record.msg, record.args = masked, ()
        return True


SECRET_MASKER = SecretMasker()
_MASKED_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3", "requests", "alerts", "alerts.engine")
for _name in _MASKED_LOGGERS:
    logging.getLogger(_name).addFilter(SECRET_MASKER)


def register_secret(*values: str | None) -> None:
    """Never log these: every channel registers its URL and secret. Of a URL, its request target
    (path and query, which urllib3 logs when it retries), path and query are registered too: a
    Slack webhook's token is in its path, other receivers take theirs in the query string."""
    from urllib.parse import urlsplit

    for value in values:
        if value:
            SECRET_MASKER.secrets.add(value)
            if "://" not in value:
                continue
            parts = urlsplit(value)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            for piece in (target, parts.path, parts.query):
                if len(piece) > 8:
                    SECRET_MASKER.secrets.add(piece)


def mask(text: str, secrets: list[str]) -> str:
    """``text`` with every secret (URLs, keys) replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def post_json(session: requests.Session, url: str, body: bytes, headers: dict[str, str], *, secrets: list[str]) -> None:
    """POST and raise :class:`DeliveryError` (with secrets masked) unless the answer is 2xx."""
    try:
        response = session.post(url, data=body, headers={"Content-Type": "application/json", **headers}, timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        raise DeliveryError(mask(f"{type(exc).__name__}: {exc}", secrets)) from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(mask(f"HTTP {response.status_code}: {response.text[:200]}", secrets))
