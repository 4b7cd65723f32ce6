"""The outbox: the ``alerts`` rows the alerter writes, and the deliverer that sends them.

Exactly-once effect: deciding is separated from sending by an outbox. In one
transaction per batch the alerter (:mod:`alerts.alerter`) updates each rule's state (in SQL)
and inserts one ``alerts`` row per (incident, state, channel) with a unique idempotency key
(:func:`alert_rows`, :func:`insert_alerts`); only then is the batch acknowledged. The
:class:`Deliverer` sends pending rows in id order per channel, marks each delivered, and
retries failures with backoff until ``FITSTREAM_ALERT_RETRY_BUDGET_SECONDS`` runs out (then
``undelivered``). A crash between deciding and sending loses nothing (the row is there) and
decides nothing twice (the state and the key are there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts.channels.base import AlertMessage, Channel, DeliveryError
from alerts.curves import Curve
from alerts.rules import Rule, RuleState, Transition
from pipeline.backoff import Backoff
from pipeline.db.bulk import upsert_insert
from pipeline.db.models import SqlAlert
from pipeline.db.session import transaction

log = logging.getLogger(__name__)

DELIVERY_POLL_S = 0.05
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0  # longest wait between two delivery attempts of one alert


def _bounded_key(key: str, limit: int = 400) -> str:
    """An idempotency key that fits its column (long rule and channel names keep a digest)."""
    if len(key) <= limit:
        return key
    return f"{key[: limit - 66]}:{hashlib.sha256(key.encode()).hexdigest()}"


def insert_alerts(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert outbox rows; a row whose idempotency key is already there is skipped (decided once)."""
    if not rows:
        return
    insert = upsert_insert(conn, SqlAlert.__table__)
    conn.execute(insert.on_conflict_do_nothing(index_elements=["idempotency_key"]), rows)


def alert_rows(
    rule: Rule,
    run_id: str,
    name: str | None,
    state: RuleState,
    transition: Transition,
    event_ts: float,
    curve: Curve | None = None,
) -> list[dict[str, Any]]:
    """The outbox rows of one transition: one per channel of the rule, each with its idempotency key
    and the message the deliverer will send."""
    rows = []
    for channel in rule.channels:
        repeat = f":repeat{transition.repeat}" if transition.repeat else ""
        occurrence = f"event-{transition.event_id}" if transition.event_id else str(state.incident)
        key = _bounded_key(f"{rule.name}:{run_id}:{occurrence}:{transition.state}{repeat}:{channel}")
        message = AlertMessage(
            key=key,
            rule=rule.name,
            run_id=run_id,
            run_name=name,
            state=transition.state,
            severity=rule.severity,
            summary=transition.summary,
            value=transition.value,
            threshold=transition.threshold,
            epoch=transition.epoch,
            event_ts=event_ts,
            **(dataclasses.asdict(curve) if curve is not None else {}),
        )
        rows.append(
            {
                "idempotency_key": key,
                "rule": rule.name,
                "run_id": run_id,
                "state": transition.state,
                "channel": channel,
                "severity": rule.severity,
                "message": json.dumps(dataclasses.asdict(message)),
                "status": "pending",
                "attempts": 0,
                "created_at": datetime.now(timezone.utc),
                "next_attempt_at": 0.0,
                "delivered_at": None,
                "last_error": None,
            }
        )
    return rows


class Deliverer:
    """Sends pending outbox rows, in id order per channel, and records the outcome."""

    def __init__(
        self,
        engine: Engine,
        channels: dict[str, Channel],
        *,
        retry_budget_s: float = 3600.0,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self.retry_max_s = retry_max_s
        self.engine = engine
        self.channels = channels
        self.retry_budget_s = retry_budget_s
        self.stop_event = threading.Event()
        self.delivered = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                if not self.deliver_once():
                    self.stop_event.wait(DELIVERY_POLL_S)
            except Exception:
                log.exception("alert delivery round failed; retrying")
                self.stop_event.wait(1.0)

    def deliver_once(self) -> int:
        """One pass over pending alerts; returns how many were delivered."""
        table = SqlAlert.__table__
        with transaction(self.engine) as conn:
            pending = conn.execute(
                sa.select(table).where(table.c.status == "pending").order_by(table.c.id).limit(200)
            ).all()
        delivered = 0
        blocked: set[str] = set()  # a channel whose oldest alert is waiting: keep its order
        now = time.time()
        for row in pending:
            if row.channel in blocked:
                continue
            if row.next_attempt_at > now:
                blocked.add(row.channel)
                continue
            channel = self.channels.get(row.channel)
            message = AlertMessage(**json.loads(row.message))
            try:
                if channel is None:
                    raise DeliveryError(f"channel {row.channel!r} is not configured")
                channel.send(message)
            except DeliveryError as exc:
                attempts = row.attempts + 1
                age = now - row.created_at.replace(tzinfo=row.created_at.tzinfo or timezone.utc).timestamp()
                give_up = age >= self.retry_budget_s
                delay = Backoff(
                    initial_s=min(RETRY_INITIAL_S, self.retry_max_s), maximum_s=self.retry_max_s
                ).delay_for(attempt=attempts)
                # The receiver's Retry-After holds past urllib3's own retries: the next attempt waits for it too.
                delay = max(delay, exc.retry_after_s or 0.0)
                with transaction(self.engine) as conn:
                    conn.execute(
                        table.update()
                        .where(table.c.id == row.id)
                        .values(
                            attempts=attempts,
                            last_error=str(exc)[:1000],
                            next_attempt_at=time.time() + delay,
                            status="undelivered" if give_up else "pending",
                        )
                    )
                log.warning(
                    "alert %s to %s failed (attempt %d): %s%s",
                    row.idempotency_key,
                    row.channel,
                    attempts,
                    exc,
                    "; giving up (undelivered)" if give_up else "",
                )
                if not give_up:
                    blocked.add(row.channel)
                continue
            with transaction(self.engine) as conn:
                conn.execute(
                    table.update()
                    .where(table.c.id == row.id)
                    .values(
                        status="delivered",
                        attempts=row.attempts + 1,
                        delivered_at=datetime.now(timezone.utc),
                        last_error=None,
                    )
                )
            delivered += 1
            self.delivered += 1
        return delivered
