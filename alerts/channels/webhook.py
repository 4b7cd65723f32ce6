"""Generic JSON webhooks, signed with HMAC-SHA256 so the receiver can verify them.

Headers: ``X-Fitstream-Timestamp`` (Unix seconds), ``X-Fitstream-Signature``
(``sha256=`` + hex HMAC of ``"<timestamp>.<body>"`` with the shared secret), and
``Idempotency-Key`` (the same for every retry of one alert: receivers drop repeats).

Verify on the receiving side::

    expected = hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    hmac.compare_digest(expected, signature.removeprefix("sha256="))
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time

from alerts.channels.base import (
    SECRET_MASKER,
    AlertMessage,
    RateLimiter,
    http_session,
    post_json,
    register_secret,
)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookChannel:
    def __init__(self, name: str, *, url: str, secret: str | None = None, rate_per_minute: int = 60) -> None:
        self.name = name
        self._url = url
        self._secret = secret
        register_secret(url, secret)
        self._session = http_session()
        self._limit = RateLimiter(rate_per_minute)

    def send(self, message: AlertMessage) -> None:
        self._limit.acquire()
        body = json.dumps({"kind": "fitstream.alert", **dataclasses.asdict(message)}).encode()
        timestamp = str(int(time.time()))
        headers = {"Idempotency-Key": message.key, "X-Fitstream-Timestamp": timestamp}
        if self._secret:
            headers["X-Fitstream-Signature"] = sign(self._secret, timestamp, body)
        post_json(
            self._session,
            self._url,
            body,
            headers,
            secrets=sorted(SECRET_MASKER.secrets, key=len, reverse=True),
        )
