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
from urllib3.exceptions import InvalidHeader
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
    metric: str | None = None  # the metric the curve shows
    curve: str | None = None  # its sparkline over the last epochs up to this alert (pipeline.sparkline)
    curve_epochs: tuple[int, int] | None = None  # the first and last epoch the curve covers


class DeliveryError(Exception):
    """A channel could not deliver a message (after its HTTP retries). Retryable later, but not
    before ``retry_after_s`` seconds when the receiver said so (``Retry-After`` on 429/503)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


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
    """At most ``per_minute`` sends per channel: one every ``60 / per_minute`` seconds, without a
    burst (a burst would put more than ``per_minute`` into the first minute, and Slack answers a
    webhook's burst with 429s). Waits, never drops.

    Example:
        >>> limit = RateLimiter(per_minute=600)  # one send every 0.1 s
        >>> start = time.monotonic(); limit.acquire(); limit.acquire()
        >>> time.monotonic() - start >= 0.1
        True
    """

    def __init__(self, per_minute: int) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1; got {per_minute!r}")
        self.interval = 60.0 / per_minute
        self.next_at = 0.0  # time.monotonic() of the earliest next send
        self.lock = threading.Lock()

    def acquire(self) -> None:
        with self.lock:
            now = time.monotonic()
            if now < self.next_at:
                time.sleep(self.next_at - now)
                now = self.next_at
            self.next_at = now + self.interval


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
_MASKED_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.util.retry",
    "urllib3",
    "requests",
    "alerts",
    "alerts.engine",
    # Logger filters do not apply to records from child loggers: each module that logs is named.
    "alerts.alerter",
    "alerts.outbox",
)
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


def post_json(
    session: requests.Session, url: str, body: bytes, headers: dict[str, str], *, secrets: list[str]
) -> None:
    """POST and raise :class:`DeliveryError` (with secrets masked) unless the answer is 2xx."""
    try:
        response = session.post(
            url, data=body, headers={"Content-Type": "application/json", **headers}, timeout=TIMEOUT_S
        )
    except requests.RequestException as exc:
        raise DeliveryError(mask(f"{type(exc).__name__}: {exc}", secrets)) from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(
            mask(f"HTTP {response.status_code}: {response.text[:200]}", secrets),
            retry_after_s=_retry_after(response),
        )


def _retry_after(response: requests.Response) -> float | None:
    """Seconds the receiver asked us to wait (``Retry-After``: seconds or an HTTP date), read as
    urllib3 reads it between its own retries; None when it did not ask, or asked unreadably."""
    value = response.headers.get("Retry-After")
    if value is None or response.status_code not in Retry.RETRY_AFTER_STATUS_CODES:
        return None
    try:
        return Retry().parse_retry_after(value)
    except InvalidHeader:
        return None
