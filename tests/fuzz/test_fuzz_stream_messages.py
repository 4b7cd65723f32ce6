"""Issue 10, fuzzing: 10,000 generated stream messages (``ci`` profile; see ``fuzzing.py``) through
the real recorder, alerter and promoter, each in its consumer group, reading a real Redis stream and
writing a real database (SQLite and PostgreSQL).

What must come of them:

* no consumer dies, and every group acknowledges every message;
* every malformed message is in the dead-letter stream, once per group, kind ``invalid_event``,
  with a reason that says what is wrong and the original fields byte for byte;
* every valid event is recorded exactly once with its exact values (``events`` for lifecycle
  events, ``epochs`` with the epoch_end's id, ``epoch_metrics``, ``batch_metrics``, ``checkpoints``)
  and each ``runs`` row is what the recorder's merge rules make of the run's events in stream order;
  nothing else is recorded;
* NaN and ±inf are values like any other (Keras logs them): stored as they are — except that
  SQLite has no NaN and stores NULL — and a NaN never replaces a known value in a ``runs`` row;
* an event no column can hold is dead-lettered as ``handler_failed`` (the recorder retries its
  batch one event at a time to find it) and the events around it are recorded;
* the alerter writes one lifecycle alert per run_failed / early_stopped event; the promoter, which
  finds no checkpoint file (the paths do not exist), promotes nothing and says so.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any

import redis
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from alerts.engine import Alerter
from alerts.rules import parse_rules
from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.consumers.base import ConsumerLoop
from pipeline.consumers.promoter import Promoter
from pipeline.consumers.recorder import Recorder
from pipeline.db.models import (
    SqlAlert,
    SqlBatchMetric,
    SqlCheckpoint,
    SqlEpoch,
    SqlEpochMetric,
    SqlEvent,
    SqlModelVersion,
    SqlRun,
)
from pipeline.promotion import PromotionLocks
from pipeline.store import open_store
from tests.conftest import wait_for
from tests.fuzz.fuzzing import examples, fuzz_settings
from tests.fuzz.stream_messages import BREAKAGES, Message, MessageFactory, drafts

GROUPS = ("recorder", "alerter", "promoter")
#: Messages per consumer read: small enough that isolating a poison event (one event per
#: transaction, its whole batch) stays cheap.
BATCH_SIZE = 100
DRAFTS_PER_EXAMPLE = 50
RULES = {
    "channels": {"team": {"type": "slack", "url_env": "FUZZ_SLACK_WEBHOOK_URL"}},
    "rules": [
        {"name": "fuzz-lifecycle", "on": ["run_failed", "early_stopped"], "channels": ["team"]},
        {"name": "fuzz-diverged", "nan": "loss", "channels": ["team"]},
        {"name": "fuzz-high", "metric": "val_loss", "above": 0.5, "for_epochs": 2, "channels": ["team"]},
        {"name": "fuzz-plateau", "metric": "val_loss", "no_improvement_epochs": 2, "channels": ["team"]},
        {
            "name": "fuzz-overfit",
            "gap": {"metric": "val_loss", "minus": "loss", "above": 0.3},
            "channels": ["team"],
        },
        {
            "name": "fuzz-job",
            "match": {"job": "digits-*"},
            "metric": "accuracy",
            "below": 0.1,
            "channels": ["team"],
        },
    ],
}


@functools.lru_cache(maxsize=1)
def generated_messages() -> tuple[Message, ...]:
    """The profile's stream messages, drawn by Hypothesis (once per session: both databases get the same)."""
    factory, out = MessageFactory(), []

    @fuzz_settings(examples("stream_messages") // DRAFTS_PER_EXAMPLE)
    @given(st.lists(drafts(), min_size=DRAFTS_PER_EXAMPLE, max_size=DRAFTS_PER_EXAMPLE))
    def generate(batch):  # type: ignore[no-untyped-def]
        out.extend(factory.build(draft) for draft in batch)

    generate()
    return tuple(out)


class Consumers:
    """The three consumers, each a real ConsumerLoop in a thread; an exception that ends one is kept."""

    def __init__(self, settings, engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
        client = redis.Redis.from_url(settings.redis_url)
        self.announced: list[ev.Event] = []
        promoter = Promoter(
            engine,
            open_store(str(tmp_path / "model-store")),
            publish=self.announced.extend,
            locks=PromotionLocks(client, settings.stream),
        )
        handlers = [Recorder(engine), Alerter(engine, parse_rules(RULES)), promoter]
        self.loops = [
            ConsumerLoop(
                h, EventStream(settings=settings), consumer_name=f"fuzz-{h.group}", batch_size=BATCH_SIZE
            )
            for h in handlers
        ]
        self.errors: dict[str, BaseException] = {}
        self.threads = [threading.Thread(target=self._run, args=(loop,), daemon=True) for loop in self.loops]

    def _run(self, loop: ConsumerLoop) -> None:
        try:
            loop.run()
        except BaseException as exc:  # the test reports it
            self.errors[loop.group] = exc
            raise

    def alive(self) -> bool:
        return all(t.is_alive() for t in self.threads)

    def __enter__(self) -> Consumers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for loop in self.loops:
            loop.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=60)


def _drained(stream: EventStream, last_id: str) -> bool:
    groups = {g["name"]: g for g in stream.groups()}
    return set(groups) == set(GROUPS) and all(
        g["last-delivered-id"] == last_id and g["pending"] == 0 for g in groups.values()
    )


def test_generated_messages_through_the_real_consumers(settings, engine, database_url, tmp_path):
    messages = generated_messages()
    assert len(messages) == examples("stream_messages")
    # The mix is what it claims: every category, every way of breaking a message, every event type.
    categories = Counter(m.category for m in messages)
    assert all(categories[c] for c in ("valid", "invalid", "unstorable", "too_long")), categories
    assert {m.breakage for m in messages if m.category == "invalid"} == set(BREAKAGES)
    assert {m.event.type for m in messages if m.category == "valid" and m.event} == set(ev.EVENT_TYPES)
    megabytes = Counter(m.category for m in messages if sum(map(len, m.fields.values())) >= 2**19)  # ~1 MB
    assert megabytes["valid"] and megabytes["invalid"], megabytes
    sqlite = database_url.startswith("sqlite")
    stream = EventStream(settings=settings)
    client = stream.client
    sent: list[tuple[str, Message]] = []

    def publish(chunk: tuple[Message, ...]) -> None:
        pipe = client.pipeline(transaction=False)
        for message in chunk:
            pipe.xadd(settings.stream, message.fields)
        sent.extend((sid.decode(), m) for sid, m in zip(pipe.execute(), chunk))

    # The first half waits in the stream (consumers read full batches, as after an outage); the
    # rest comes while they read (small batches, as in production).
    half = len(messages) // 2
    publish(messages[:half])
    with Consumers(settings, engine, tmp_path) as consumers:
        for start in range(half, len(messages), 100):
            publish(messages[start : start + 100])
        last_id = sent[-1][0]

        def done() -> bool:
            assert consumers.alive(), f"a consumer died: {consumers.errors!r}"
            return _drained(stream, last_id)

        wait_for(done, timeout=600, interval=0.5, message="every group to acknowledge every message")
        assert consumers.alive() and not consumers.errors

    _check_dead_letters(client, settings.stream, sent, sqlite)
    recorded = [m for _sid, m in sent if m.category == "valid" or (m.category == "too_long" and sqlite)]
    _check_history(engine, recorded, sqlite)
    _check_alerts(engine, [m for _sid, m in sent if m.category in ("valid", "too_long")])
    _check_promotions(engine, consumers.announced, tmp_path)


# -- dead letters -------------------------------------------------------------------------------
def _check_dead_letters(
    client: redis.Redis, stream_key: str, sent: list[tuple[str, Message]], sqlite: bool
) -> None:
    letters: dict[tuple[str, str], list[dict[bytes, bytes]]] = defaultdict(list)
    for _id, fields in client.xrange(f"{stream_key}:dead"):
        letters[(fields[b"group"].decode(), fields[b"source_id"].decode())].append(fields)
    problems: list[str] = []
    for sid, message in sent:
        for group in GROUPS:
            found = letters.pop((group, sid), [])
            if message.category == "invalid":
                if len(found) != 1:
                    problems.append(
                        f"{message.what} ({sid}): {len(found)} dead letters in {group}, expected 1"
                    )
                    continue
                letter = found[0]
                reason = letter[b"reason"].decode()
                if letter[b"kind"] != b"invalid_event" or not re.search(message.reason, reason):
                    problems.append(
                        f"{message.what} ({sid}) in {group}: kind {letter[b'kind']!r}, reason {reason[:300]!r}; expected /{message.reason}/"
                    )
                original = {k.removeprefix(b"orig."): v for k, v in letter.items() if k.startswith(b"orig.")}
                if original != message.fields:
                    problems.append(
                        f"{message.what} ({sid}) in {group}: the dead letter does not hold the original fields"
                    )
            elif message.category == "unstorable" or (message.category == "too_long" and not sqlite):
                # No column holds it: the recorder must say so; other groups may store less of it.
                if group == "recorder" and len(found) != 1:
                    problems.append(f"{message.what} ({sid}): {len(found)} recorder dead letters, expected 1")
                for letter in found:
                    reason = letter[b"reason"].decode()
                    if letter[b"kind"] != b"handler_failed" or not reason.startswith(
                        f"{group} handler failed: "
                    ):
                        problems.append(
                            f"{message.what} ({sid}) in {group}: kind {letter[b'kind']!r}, reason {reason[:300]!r}"
                        )
            elif found:
                problems.append(
                    f"{message.what} ({sid}) was dead-lettered by {group}: {found[0][b'reason'][:300]!r}"
                )
    problems += [f"dead letter for a message never sent: {key}" for key in letters]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


# -- the history database -----------------------------------------------------------------------
def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN, datetimes compared in UTC (SQLite gives them back naive), JSON text parsed."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, datetime) and isinstance(b, datetime):
        return (a if a.tzinfo else a.replace(tzinfo=timezone.utc)) == (
            b if b.tzinfo else b.replace(tzinfo=timezone.utc)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class ExpectedRun:
    """A ``runs`` row as the recorder's documented merge rules make it, from a run's events in stream order:
    statuses only move forward (queued < running < the first terminal status); ``queued_at`` and
    ``started_at`` keep the first value; ``epochs_completed`` and ``last_event_at`` the largest;
    every other column the latest value that is neither null nor NaN."""

    RANK = {"queued": 0, "running": 1}

    def __init__(self) -> None:
        self.row: dict[str, Any] = {"status": None, "epochs_completed": 0}

    def status(self, status: str) -> None:
        if self.row["status"] is None or self.RANK.get(status, 2) > self.RANK.get(self.row["status"], 2):
            self.row["status"] = status

    def latest(self, **values: Any) -> None:
        for key, value in values.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.row[key] = value

    def first(self, key: str, value: Any) -> None:
        self.row.setdefault(key, value)

    def largest(self, key: str, value: Any) -> None:
        current = self.row.get(key)
        self.row[key] = value if current is None or value > current else current

    def see(self, e: ev.Event) -> None:
        at = _utc(e.ts)
        self.largest("last_event_at", at)
        self.status(
            "queued"
            if isinstance(e, ev.RunQueued)
            else e.status
            if isinstance(e, ev.RunFinished)
            else "running"
        )
        if isinstance(e, ev.RunQueued):
            self.first("queued_at", at)
            self.latest(name=e.name, queue=e.queue, tags=e.tags or None)
        elif isinstance(e, ev.RunStarted):
            self.first("started_at", at)
            self.latest(
                name=e.name,
                epochs_planned=e.epochs,
                monitor=e.monitor,
                mode=e.mode,
                model_name=e.model_name,
                params_count=e.params_count,
                optimizer=e.optimizer,
                batch_size=e.batch_size,
                host=e.host,
                tags=e.tags or None,
                data_fingerprint=e.data_fingerprint,
            )
        elif isinstance(e, ev.EpochEnd):
            self.largest("epochs_completed", e.epoch + 1)
        elif isinstance(e, ev.EarlyStopped):
            self.latest(
                stopped_epoch=e.stopped_epoch,
                best_epoch=e.best_epoch,
                best_value=e.best_value,
                monitor=e.monitor,
                mode=e.mode,
            )
        elif isinstance(e, ev.RunFinished):
            self.latest(
                finished_at=at,
                wall_time_s=e.wall_time_s,
                best_epoch=e.best_epoch,
                best_value=e.best_value,
                monitor=e.monitor,
                mode=e.mode,
                restored_best_weights=int(e.restored_best_weights),
            )
            self.largest("epochs_completed", e.epochs_completed)
        elif isinstance(e, ev.RunFailed):
            self.latest(error_type=e.error_type, error_message=e.message)


def _expected_history(recorded: list[Message], sqlite: bool) -> dict[str, dict[Any, dict[str, Any]]]:
    def stored(value: Any) -> Any:  # SQLite has no NaN: it stores NULL
        return None if sqlite and isinstance(value, float) and math.isnan(value) else value

    events: dict[Any, dict[str, Any]] = {}
    metrics: dict[Any, dict[str, Any]] = {}
    epochs: dict[Any, dict[str, Any]] = {}
    checkpoints: dict[Any, dict[str, Any]] = {}
    batch_metrics: dict[Any, dict[str, Any]] = {}
    runs: dict[str, ExpectedRun] = defaultdict(ExpectedRun)
    for message in recorded:
        e = message.event
        assert e is not None
        at = _utc(e.ts)
        # An epoch_end is recorded as its epochs row (event id included), a batch_end with a step as
        # batch_metrics rows: only the other (lifecycle) events keep their raw JSON in ``events``.
        if not isinstance(e, ev.EpochEnd) and not (isinstance(e, ev.BatchEnd) and e.step is not None):
            events.setdefault(
                e.id,
                {
                    "run_id": e.run_id,
                    "seq": e.seq,
                    "type": e.type,
                    "ts": at,
                    "payload": message.payload.decode(),
                },
            )
        runs[e.run_id].see(e)
        if isinstance(e, ev.BatchEnd) and e.step is not None:
            for name, value in e.metrics.items():
                batch_metrics.setdefault(
                    (e.run_id, name, e.step), {"epoch": e.epoch, "value": stored(value), "ts": at}
                )
        if isinstance(e, ev.EpochEnd):
            for name, value in e.metrics.items():
                metrics.setdefault((e.run_id, name, e.epoch), {"value": stored(value)})
            epochs.setdefault(
                (e.run_id, e.epoch),
                {
                    "learning_rate": stored(e.learning_rate),
                    "wall_time_s": stored(e.wall_time_s),
                    "steps": e.steps,
                    "samples_per_second": stored(e.samples_per_second),
                    "steps_per_second": stored(e.steps_per_second),
                    "ended_at": at,
                    "event_id": e.id,
                },
            )
        elif isinstance(e, ev.CheckpointSaved):
            checkpoints.setdefault(
                (e.run_id, e.epoch, e.path),
                {
                    "monitor": e.monitor,
                    "value": stored(e.value),
                    "size_bytes": e.size_bytes,
                    "sha256": e.sha256,
                    "saved_at": at,
                    "mode": e.mode,
                    "source": e.source,
                    "batch": e.batch,
                },
            )
    return {
        "events": events,
        "epoch_metrics": metrics,
        "epochs": epochs,
        "checkpoints": checkpoints,
        "batch_metrics": batch_metrics,
        "runs": {run_id: run.row for run_id, run in runs.items()},
    }


TABLES = {
    "events": (SqlEvent, ("event_id",)),
    "epoch_metrics": (SqlEpochMetric, ("run_id", "name", "epoch")),
    "epochs": (SqlEpoch, ("run_id", "epoch")),
    "checkpoints": (SqlCheckpoint, ("run_id", "epoch", "path")),
    "batch_metrics": (SqlBatchMetric, ("run_id", "name", "step")),
    "runs": (SqlRun, ("run_id",)),
}
JSON_COLUMNS = ("tags", "optimizer")


def _actual_history(engine: sa.Engine) -> dict[str, dict[Any, dict[str, Any]]]:
    actual: dict[str, dict[Any, dict[str, Any]]] = {}
    with engine.connect() as conn:
        for name, (model, key) in TABLES.items():
            rows = {}
            for row in conn.execute(sa.select(model.__table__)).mappings():
                values = {
                    c: (json.loads(v) if c in JSON_COLUMNS and v is not None else v)
                    for c, v in row.items()
                    if c not in key
                }
                rows[row[key[0]] if len(key) == 1 else tuple(row[k] for k in key)] = values
            actual[name] = rows
    return actual


def _check_history(engine: sa.Engine, recorded: list[Message], sqlite: bool) -> None:
    expected, actual = _expected_history(recorded, sqlite), _actual_history(engine)
    problems: list[str] = []
    for table, rows in expected.items():
        got = actual[table]
        problems += [f"{table}: missing {key!r}"[:300] for key in rows.keys() - got.keys()]
        problems += [f"{table}: unexpected {key!r}"[:300] for key in got.keys() - rows.keys()]
        for key in rows.keys() & got.keys():
            want = {**dict.fromkeys(got[key]), **rows[key]} if table == "runs" else rows[key]
            for column, value in want.items():
                if not _same(got[key].get(column), value):
                    problems.append(
                        f"{table} {key!r:.80}: {column} = {got[key].get(column)!r:.120}, expected {value!r:.120}"
                    )
    assert not problems, f"{len(problems)} differences from what the events say:\n" + "\n".join(problems[:40])


# -- the alerter and the promoter ----------------------------------------------------------------
def _check_alerts(engine: sa.Engine, handled: list[Message]) -> None:
    """One lifecycle alert per run_failed / early_stopped event (by event id, redelivered or not)."""
    lifecycle = {
        m.event.id for m in handled if m.event is not None and m.event.type in ("run_failed", "early_stopped")
    }
    table = SqlAlert.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.idempotency_key, table.c.run_id).where(table.c.rule == "fuzz-lifecycle")
        ).all()
    assert (
        len(rows) == len(lifecycle)
        and {key.split(":event-")[1].split(":")[0] for key, _run in rows} == lifecycle
    )


def _check_promotions(engine: sa.Engine, announced: list[ev.Event], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No checkpoint file exists: nothing is promoted, each refusal is announced with a reason, as a valid event."""
    assert announced, "the promoter announced nothing, though early_stopped events came"
    assert all(isinstance(e, ev.PromotionSkipped) and e.reason for e in announced), {
        type(e).__name__ for e in announced
    }
    assert all(ev.decode(ev.encode(e)) == e for e in announced)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(SqlModelVersion.__table__)).scalar() == 0
    store = tmp_path / "model-store"
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))
