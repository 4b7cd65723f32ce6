"""The alerter: a consumer-group handler that turns events into alerts.

For each event it evaluates the rules (the rules file's and the run's own) against each rule's
state for that run, and in the same transaction stores the new states and writes the outbox
rows of every transition (see :mod:`alerts.outbox`, which also sends them). "Stalled" rules
fire on a timer instead (:meth:`Alerter.check_stalled`, driven by :class:`StallWatcher`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts.curves import recent_curve, remember, rule_metric
from alerts.outbox import alert_rows, insert_alerts
from alerts.rules import Rule, RulesFile, RuleState, Transition, evaluate, parse_rules
from pipeline import events as ev
from pipeline.consumers.base import Received
from pipeline.db.bulk import greatest, upsert_insert
from pipeline.db.migrate import require_head
from pipeline.db.models import TERMINAL_STATUSES, SqlAlertRun, SqlAlertState
from pipeline.db.session import transaction
from pipeline.errors import ConfigurationError

log = logging.getLogger(__name__)

GROUP = "alerter"
STALL_CHECK_S = 2.0


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
                        outbox += alert_rows(rule, event.run_id, name, new, transition, event.ts, curve)
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
            insert_alerts(conn, outbox)

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
                    outbox += alert_rows(rule, run.run_id, run.name, state, transition, now)
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
            insert_alerts(conn, outbox)
        return fired


class StallWatcher:
    """Runs :meth:`Alerter.check_stalled` every ``interval_s`` until stopped; a failed check is logged
    and tried again at the next interval."""

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
