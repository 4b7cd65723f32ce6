"""The alerter: a consumer group that turns events into alerts, and a deliverer that sends them.

Exactly-once effect: deciding is separated from sending by an outbox. In one
transaction per batch the alerter updates each rule's state (in SQL) and inserts
one ``alerts`` row per (incident, state, channel) with a unique idempotency key;
only then is the batch acknowledged. The deliverer sends pending rows in id order
per channel, marks each delivered, and retries failures with backoff until
``FITSTREAM_ALERT_RETRY_BUDGET_SECONDS`` runs out (then ``undelivered``). A crash
between deciding and sending loses nothing (the row is there) and decides nothing
twice (the state and the key are there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts.channels.base import AlertMessage, Channel, DeliveryError
from alerts.channels.slack import SlackChannel
from alerts.channels.webhook import WebhookChannel
from alerts.curves import Curve, recent_curve, remember, rule_metric
from alerts.rules import Rule, RulesFile, RuleState, Transition, evaluate, parse_rules
from pipeline import events as ev
from pipeline.backoff import Backoff
from pipeline.consumers.base import Received
from pipeline.db.bulk import greatest, upsert_insert
from pipeline.db.migrate import require_head
from pipeline.db.models import TERMINAL_STATUSES, SqlAlert, SqlAlertRun, SqlAlertState
from pipeline.db.session import transaction
from pipeline.errors import ConfigurationError

log = logging.getLogger(__name__)

GROUP = "alerter"
DELIVERY_POLL_S = 0.05
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0  # longest wait between two delivery attempts of one alert
STALL_CHECK_S = 2.0


def build_channels(rules: RulesFile, environ: dict[str, str] | None = None) -> dict[str, Channel]:
    """Channels with their URLs and secrets read from the environment or secrets files (never from
    the rules file, never logged). Read once: restart the alerter after rotating a secret."""
    environ = dict(os.environ if environ is None else environ)
    channels: dict[str, Channel] = {}
    for name, spec in rules.channels.items():
        url = _secret(name, "URL", spec.url_env, spec.url_file, environ)
        assert url is not None
        if spec.type == "slack":
            channels[name] = SlackChannel(name, url=url, rate_per_minute=spec.rate_per_minute)
        else:
            secret = _secret(name, "secret", spec.secret_env, spec.secret_file, environ)
            channels[name] = WebhookChannel(
                name, url=url, secret=secret, rate_per_minute=spec.rate_per_minute
            )
    return channels


def _secret(
    channel: str, what: str, variable: str | None, path: str | None, environ: dict[str, str]
) -> str | None:
    """A channel's URL or secret from its variable or file; an error names where, never the value."""
    if variable is not None:
        value = environ.get(variable)
        if not value:
            raise ConfigurationError(
                f"channel {channel!r}: environment variable {variable} (its {what}) is not set"
            )
        return value
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as exc:
        raise ConfigurationError(
            f"channel {channel!r}: cannot read its {what} from {path}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"channel {channel!r}: {path} (its {what}) is not UTF-8 text") from None
    if not value:
        raise ConfigurationError(f"channel {channel!r}: {path} (its {what}) is empty")
    return value


def _upsert(
    conn: Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str], update: list[str]
) -> None:
    if not rows:
        return
    insert = upsert_insert(conn, table)
    statement = insert.on_conflict_do_update(
        index_elements=keys, set_={c: insert.excluded[c] for c in update}
    )
    conn.execute(statement, rows)


def _bounded_key(key: str, limit: int = 400) -> str:
    """An idempotency key that fits its column (long rule and channel names keep a digest)."""
    if len(key) <= limit:
        return key
    return f"{key[: limit - 66]}:{hashlib.sha256(key.encode()).hexdigest()}"


def _insert_alerts(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    insert = upsert_insert(conn, SqlAlert.__table__)
    conn.execute(insert.on_conflict_do_nothing(index_elements=["idempotency_key"]), rows)


class Alerter:
    """Consumer-group handler: evaluates the rules on each event and writes the outbox."""

    group = GROUP
    #: Rule state machines need a run's events in order: one alerter of the group leads, others stand by.
    ordered = True

    def __init__(self, engine: Engine, rules: RulesFile) -> None:
        require_head(engine)
        self.engine = engine
        self.rules = rules
        self._job_rules_cache: dict[str, tuple[str, tuple[Rule, ...]]] = {}

    # -- events ----------------------------------------------------------------------------
    def handle(self, batch: Sequence[Received]) -> None:
        events = sorted((r.event for r in batch), key=lambda e: (e.run_id, e.seq))
        with transaction(self.engine) as conn:
            runs, recent = self._update_runs(conn, events)
            states = self._load_states(conn, {e.run_id for e in events})
            outbox: list[dict[str, Any]] = []
            changed: dict[tuple[str, str], RuleState] = {}
            for event in events:
                name, tags, job_rules = runs.get(event.run_id, (None, {}, ()))
                for rule in (*self.rules.rules, *job_rules):
                    if not rule.matches(name, tags):
                        continue
                    key = (rule.name, event.run_id)
                    state = changed.get(key, states.get(key, RuleState()))
                    if rule.kind == "stalled":
                        new, transition = self._stall_resolves(rule, state, event)
                    else:
                        new, transition = evaluate(rule, state, event)
                    if new != state:
                        changed[key] = new
                    if transition is not None:
                        curve = recent_curve(
                            recent.get(event.run_id), rule_metric(rule), getattr(event, "epoch", None)
                        )
                        outbox += self._alert_rows(rule, event.run_id, name, new, transition, event.ts, curve)
            _upsert(
                conn,
                SqlAlertState.__table__,
                [
                    {
                        "rule": r,
                        "run_id": run,
                        "state": json.dumps(dataclasses.asdict(s)),
                        "firing": s.firing,
                        "updated_at": time.time(),
                    }
                    for (r, run), s in changed.items()
                ],
                ["rule", "run_id"],
                ["state", "firing", "updated_at"],
            )
            _insert_alerts(conn, outbox)

    @staticmethod
    def _stall_resolves(rule: Rule, state: RuleState, event: ev.Event) -> tuple[RuleState, Transition | None]:
        if state.firing:
            return dataclasses.replace(state, firing=False), Transition(
                "resolved", f"events flow again ({event.type})"
            )
        return state, None

    def _update_runs(
        self,
        conn: Connection,
        events: list[ev.Event],
    ) -> tuple[dict[str, tuple[str | None, dict[str, str], tuple[Rule, ...]]], dict[str, dict[str, Any]]]:
        """Upsert what the alerter knows of each run (name, tags, its own rules, status, last event,
        recent metric values); returns each run's (name, tags, rules) and its recent metrics."""
        table = SqlAlertRun.__table__
        known = {
            r.run_id: json.loads(r.recent_metrics) if r.recent_metrics else None
            for r in conn.execute(
                sa.select(table.c.run_id, table.c.recent_metrics).where(
                    table.c.run_id.in_({e.run_id for e in events})
                )
            )
        }
        recent: dict[str, dict[str, Any]] = {}
        facts: dict[str, dict[str, Any]] = {}
        for event in events:
            row = facts.setdefault(
                event.run_id,
                {
                    "run_id": event.run_id,
                    "name": None,
                    "tags": None,
                    "rules": None,
                    "status": None,
                    "last_event_at": event.ts,
                },
            )
            row["last_event_at"] = max(row["last_event_at"], event.ts)
            # A queued job waits for a worker: it is not running, so it cannot stall.
            if isinstance(event, ev.RunQueued):
                row["status"] = row["status"] or "queued"
            elif row["status"] in (None, "queued"):
                row["status"] = "running"
            if isinstance(event, (ev.RunQueued, ev.RunStarted)):
                row["name"] = event.name
                if event.tags:
                    row["tags"] = json.dumps(event.tags)
            if isinstance(event, ev.RunQueued) and event.spec.get("alerts"):
                row["rules"] = json.dumps(event.spec["alerts"])
            if isinstance(event, ev.RunFinished):
                row["status"] = event.status
            if isinstance(event, (ev.EpochEnd, ev.RunStarted)):
                curves = recent.get(event.run_id) or recent.setdefault(
                    event.run_id, known.get(event.run_id) or {"monitor": None, "metrics": {}}
                )
                remember(curves, event)
                row["recent_metrics"] = curves
        for row in facts.values():
            row["recent_metrics"] = json.dumps(row["recent_metrics"]) if row.get("recent_metrics") else None
        insert = upsert_insert(conn, table)
        statement = insert.on_conflict_do_update(
            index_elements=["run_id"],
            set_={
                "name": sa.func.coalesce(insert.excluded.name, table.c.name),
                "tags": sa.func.coalesce(insert.excluded.tags, table.c.tags),
                "rules": sa.func.coalesce(insert.excluded.rules, table.c.rules),
                # A terminal status sticks, and a late or replayed run_queued does not make a running
                # run "queued" again (literal SQL: no expanding IN inside an executemany).
                "status": sa.case(
                    (
                        sa.or_(*(table.c.status == sa.literal_column(f"'{s}'") for s in TERMINAL_STATUSES)),
                        table.c.status,
                    ),
                    (insert.excluded.status == sa.literal_column("'queued'"), table.c.status),
                    else_=insert.excluded.status,
                ),
                "last_event_at": greatest(conn, table.c.last_event_at, insert.excluded.last_event_at),
                "recent_metrics": sa.func.coalesce(insert.excluded.recent_metrics, table.c.recent_metrics),
            },
        )
        conn.execute(statement, list(facts.values()))
        rows = conn.execute(
            sa.select(table.c.run_id, table.c.name, table.c.tags, table.c.rules).where(
                table.c.run_id.in_(list(facts))
            )
        ).all()
        runs = {
            r.run_id: (r.name, json.loads(r.tags) if r.tags else {}, self._job_rules(r.run_id, r.rules))
            for r in rows
        }
        return runs, {**{run_id: curves for run_id, curves in known.items() if curves}, **recent}

    def _job_rules(self, run_id: str, raw: str | None) -> tuple[Rule, ...]:
        """A job's own rules (from its spec's ``alerts:``), with the rules file's channels."""
        if not raw:
            return ()
        cached = self._job_rules_cache.get(run_id)
        if cached is not None and cached[0] == raw:
            return cached[1]
        try:
            rules = tuple(
                parse_rules(
                    {"channels": dict(self.rules.channels), "rules": json.loads(raw)},
                    source=f"run {run_id} alerts",
                ).rules
            )
        except ConfigurationError as exc:
            log.error("ignoring the alert rules of run %s: %s", run_id, exc)
            rules = ()
        if len(self._job_rules_cache) > 10_000:
            self._job_rules_cache.clear()
        self._job_rules_cache[run_id] = (raw, rules)
        return rules

    @staticmethod
    def _load_states(conn: Connection, run_ids: set[str]) -> dict[tuple[str, str], RuleState]:
        table = SqlAlertState.__table__
        query = sa.select(table.c.rule, table.c.run_id, table.c.state).where(
            table.c.run_id.in_(list(run_ids))
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()  # two alerters of one group never interleave a run's state
        return {(r.rule, r.run_id): RuleState(**json.loads(r.state)) for r in conn.execute(query)}

    def _alert_rows(
        self,
        rule: Rule,
        run_id: str,
        name: str | None,
        state: RuleState,
        transition: Transition,
        event_ts: float,
        curve: Curve | None = None,
    ) -> list[dict[str, Any]]:
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

    # -- time-based rules -------------------------------------------------------------------------
    def check_stalled(self, now: float | None = None) -> int:
        """Fire "stalled" rules (the rules file's and each job's own) for running runs silent for
        longer than their threshold."""
        now = time.time() if now is None else now
        file_rules = [r for r in self.rules.rules if r.kind == "stalled"]
        fired = 0
        runs_table, state_table = SqlAlertRun.__table__, SqlAlertState.__table__
        with transaction(self.engine) as conn:
            # Runs silent past the file's shortest threshold, and runs with rules of their own.
            candidates = [runs_table.c.rules.is_not(None)]
            if file_rules:
                candidates.append(
                    runs_table.c.last_event_at < now - min(r.stalled_seconds or 0 for r in file_rules)
                )
            silent = conn.execute(
                sa.select(runs_table).where(runs_table.c.status == "running", sa.or_(*candidates))
            ).all()
            outbox, changed = [], {}
            for run in silent:
                tags = json.loads(run.tags) if run.tags else {}
                job_rules = [r for r in self._job_rules(run.run_id, run.rules) if r.kind == "stalled"]
                for rule in (*file_rules, *job_rules):
                    if not rule.matches(run.name, tags) or run.last_event_at >= now - (
                        rule.stalled_seconds or 0
                    ):
                        continue
                    row = conn.execute(
                        sa.select(state_table.c.state).where(
                            state_table.c.rule == rule.name, state_table.c.run_id == run.run_id
                        )
                    ).scalar()
                    state = RuleState(**json.loads(row)) if row else RuleState()
                    if state.firing:
                        continue
                    state = dataclasses.replace(state, firing=True, incident=state.incident + 1)
                    changed[(rule.name, run.run_id)] = state
                    transition = Transition(
                        "firing",
                        f"no event from this run for {now - run.last_event_at:.0f}s (limit {rule.stalled_seconds:g}s)",
                    )
                    outbox += self._alert_rows(rule, run.run_id, run.name, state, transition, now)
                    fired += 1
            _upsert(
                conn,
                state_table,
                [
                    {
                        "rule": r,
                        "run_id": run,
                        "state": json.dumps(dataclasses.asdict(s)),
                        "firing": True,
                        "updated_at": now,
                    }
                    for (r, run), s in changed.items()
                ],
                ["rule", "run_id"],
                ["state", "firing", "updated_at"],
            )
            _insert_alerts(conn, outbox)
        return fired


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


class StallWatcher:
    def __init__(self, alerter: Alerter, interval_s: float = STALL_CHECK_S) -> None:
        self.alerter = alerter
        self.interval_s = interval_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            try:
                self.alerter.check_stalled()
            except Exception:
                log.exception("stall check failed; retrying")
