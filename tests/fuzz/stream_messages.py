"""Generated stream messages: valid events of every type, and malformed ones, as raw XADD fields.

A :func:`drafts` strategy draws what a message is (its category, event class and field values);
a :class:`MessageFactory` turns each draft into the fields written to Redis, giving it the keys
that must be unique for the recorder's rows to be predictable (event ids, a run's epoch numbers,
checkpoint paths). Categories:

* ``valid``: an event of any type built with the real event class (``events.build``), values
  random but within what the schema and the history database hold — NaN and ±inf included
  wherever a float goes (a metric, a learning rate, a best value). Some are 1 MB texts, some
  carry extra stream fields holding invalid UTF-8 (consumers read only the payload), some are
  an exact redelivery of an earlier message (recorded once).
* ``invalid``: what the schema must refuse with a reason — not JSON, JSON that is not an object,
  no payload field, an unknown schema version or event type, a required field missing, a value of
  the wrong type or out of range, an extra field (up to 1 MB), text SQL cannot hold (NUL, an
  unpaired surrogate), a non-finite timestamp, nesting 250 to 100,000 levels deep, bytes that are
  not UTF-8 (or another encoding of a valid event).
* ``unstorable``: valid by the schema, but no database column holds it (an integer past 64
  bits): the recorder dead-letters it as ``handler_failed``, found by retrying its batch one
  event at a time.
* ``too_long``: text longer than its column: PostgreSQL refuses it (``handler_failed``), SQLite
  stores it (SQLite does not enforce VARCHAR lengths).
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import dataclass, field
from types import UnionType
from typing import Any

import annotated_types
import pydantic
from hypothesis import strategies as st

from pipeline import events as ev

# -- values ---------------------------------------------------------------------------------
INT32_MAX = 2**31 - 1  # Integer columns (epoch, batch, epochs_completed, …)
INT64_MAX = 2**63 - 1  # BigInteger columns (seq, params_count, size_bytes)
#: 9999-12-31 23:59:59 UTC: the last second a Python datetime (and so a timestamp column) can hold.
MAX_TS = 253_402_300_799.0
MEGABYTE = 2**20

RUN_IDS = [f"fuzz-{i:03d}" for i in range(120)] + [
    "ünïcødé-run",
    "run with spaces",
    "r'; DROP TABLE runs; --",
    "🚀",
    "%_like_%wildcards",
    "x" * 64,
    "a",
]
_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    """Any Unicode text SQL can store: no NUL, no unpaired surrogate."""
    return st.text(_CHARS, min_size=min_size, max_size=max_size)


def megabyte_of(char: str) -> str:
    """``char`` repeated to about 1 MB of payload (JSON escapes non-ASCII text, up to 12 bytes a character)."""
    return char * (MEGABYTE // len(json.dumps(char)))


#: Longer than any name may be; now and then a megabyte (YAML takes a second to write and read one).
long_texts = st.builds(
    lambda char, huge: megabyte_of(char) if huge else char * 300,
    text(1, 1),
    st.sampled_from([False] * 10 + [True] + [False] * 10),
)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


floats = st.floats()  # NaN and ±inf included: Keras logs them, the schema keeps them
int32 = st.integers(0, INT32_MAX)
int64 = st.integers(0, INT64_MAX)
timestamps = st.floats(0, MAX_TS) | st.sampled_from([0.0, 1_700_000_000.123456, MAX_TS])
modes = st.sampled_from(["min", "max"])
metric_names = st.sampled_from(["loss", "val_loss", "accuracy", "val_accuracy", "val_auc", "m" * 255]) | text(
    12, 1
)
#: Text is drawn short (each character is a draw); the longest a column holds is sampled whole.
names = st.sampled_from(
    ["digits-mlp", "fuzz-job", "breast cancer auc", "n" * 255, "é" * 255, "🚀" * 255]
) | text(16, 1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text(20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text(8), children, max_size=3),
    max_leaves=8,
)
tags = st.dictionaries(text(12), text(12), max_size=3)
metrics = st.dictionaries(metric_names, optional(floats), max_size=6)
#: A job's own alert rules (carried in run_queued's spec): valid ones, and junk the alerter ignores.
job_alerts = st.lists(
    st.sampled_from(
        [
            {"name": "job-diverged", "nan": "loss", "channels": ["team"]},
            {"name": "job-high", "metric": "val_loss", "above": 0.5, "channels": ["team"]},
            {"name": "job-lifecycle", "on": ["run_failed", "early_stopped"], "channels": ["team"]},
            {"name": "job-bad-channel", "nan": "loss", "channels": ["nowhere"]},
            {"name": 7},
        ]
    ),
    max_size=2,
)
promote_settings = st.fixed_dictionaries(
    {},
    optional={
        "on_early_stop": st.booleans(),
        "on_complete": st.booleans(),
        "force": st.booleans(),
        "name": text(30, 1),
    },
)
specs = st.builds(
    lambda known, extra: {**extra, **known},
    st.fixed_dictionaries(
        {}, optional={"name": names, "promote": promote_settings, "alerts": job_alerts, "fit": json_values}
    ),
    st.dictionaries(text(10), json_values, max_size=3),
)
callbacks = st.lists(
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["early_stopping", "model_checkpoint", "reduce_lr_on_plateau"]),
            "monitor": metric_names,
            "mode": st.sampled_from(["min", "max", "auto"]) | text(5),
        },
        optional={"settings": st.dictionaries(text(10), json_values, max_size=3)},
    ),
    max_size=3,
)

#: Field values of each event type (envelope and unique keys aside), valid and storable.
FIELDS: dict[type, st.SearchStrategy[dict[str, Any]]] = {
    ev.RunQueued: st.fixed_dictionaries(
        {"name": names, "queue": st.sampled_from(["gpu", "q" * 64]) | text(12)},
        optional={"spec": specs, "tags": tags},
    ),
    ev.RunStarted: st.fixed_dictionaries(
        {"name": names},
        optional={
            "model_name": optional(names),
            "params_count": optional(int64),
            "optimizer": optional(st.dictionaries(text(10), json_values, max_size=4)),
            "epochs": optional(int32),
            "steps_per_epoch": optional(st.integers(1)),
            "batch_size": optional(int32),
            "monitor": optional(metric_names),
            "mode": optional(modes),
            "callbacks": callbacks,
            "tags": tags,
            "host": optional(names),
            "pid": optional(st.integers()),
            "data_fingerprint": optional(st.sampled_from(["sha256:" + "0" * 64, "f" * 80]) | text(12)),
        },
    ),
    ev.EpochEnd: st.fixed_dictionaries(
        {"metrics": metrics},
        optional={
            "learning_rate": optional(floats),
            "wall_time_s": optional(floats),
            "steps": optional(int32),
            "samples_per_second": optional(floats),
            "steps_per_second": optional(floats),
        },
    ),
    ev.BatchEnd: st.fixed_dictionaries(
        {"epoch": int32, "batch": st.integers(0), "metrics": metrics},
        optional={"step": optional(int64)},  # without one (older publishers): kept in ``events`` only
    ),
    ev.CheckpointSaved: st.fixed_dictionaries(
        {"epoch": int32},
        optional={
            "monitor": optional(metric_names),
            "value": optional(floats),
            "size_bytes": optional(int64),
            "sha256": optional(st.sampled_from(["a" * 64]) | text(12)),
            "mode": optional(modes),
            "source": st.sampled_from(["model_checkpoint", "early_stopping_restore"]),
            "batch": optional(int32),
        },
    ),
    ev.LearningRateChanged: st.fixed_dictionaries(
        {"epoch": st.integers(0), "old": floats, "new": floats},
        optional={"reason": optional(text(40)), "monitor": optional(metric_names), "mode": optional(modes)},
    ),
    ev.EarlyStopped: st.fixed_dictionaries(
        {
            "stopped_epoch": int32,
            "best_epoch": int32,
            "best_value": optional(floats),
            "monitor": metric_names,
            "mode": modes,
        },
        optional={
            "patience": optional(st.integers()),
            "min_delta": optional(floats),
            "restore_best_weights": st.booleans(),
        },
    ),
    ev.RunFinished: st.fixed_dictionaries(
        {
            "status": st.sampled_from(["completed", "early_stopped", "failed", "cancelled"]),
            "epochs_completed": int32,
        },
        optional={
            "wall_time_s": optional(floats),
            "best_epoch": optional(st.integers(-INT32_MAX - 1, INT32_MAX)),
            "best_value": optional(floats),
            "monitor": optional(metric_names),
            "mode": optional(modes),
            "restored_best_weights": st.booleans(),
        },
    ),
    ev.RunFailed: st.fixed_dictionaries(
        {"error_type": names, "message": text(40)},
        optional={"traceback": optional(text(40))},
    ),
    ev.ModelPromoted: st.fixed_dictionaries(
        {"name": names, "version": st.integers(1)},
        optional={
            "epoch": optional(st.integers()),
            "metric": optional(metric_names),
            "mode": optional(modes),
            "value": optional(floats),
            "aliases": st.lists(text(12), max_size=3),
            "champion": st.booleans(),
            "previous_champion_version": optional(st.integers()),
            "previous_champion_value": optional(floats),
            "source": optional(st.sampled_from(["model_checkpoint", "early_stopping_restore"])),
            "champion_reason": optional(text(40)),
        },
    ),
    ev.PromotionSkipped: st.fixed_dictionaries({"reason": text(100)}, optional={"name": optional(names)}),
}
EVENT_CLASSES = list(FIELDS)


# -- what a message is -------------------------------------------------------------------------
@dataclass(frozen=True)
class Draft:
    """A drawn message, before the factory gives it its unique keys."""

    category: str  # valid, redelivery, invalid, unstorable, too_long
    cls: type
    fields: dict[str, Any]
    run: int
    seq: int
    ts: float
    #: invalid: how the event is broken (see :func:`_break`), and what the reason must say.
    breakage: tuple[Any, ...] = ()
    extra_stream_fields: dict[bytes, bytes] = field(default_factory=dict)


@dataclass
class Message:
    """One stream entry as written, and what must come of it."""

    fields: dict[bytes, bytes]
    category: str
    event: ev.Event | None = None  # valid, unstorable and too_long: the event as built
    #: invalid: a pattern the dead letter's reason must match (``re.search``).
    reason: str = ""
    what: str = ""  # for failure messages
    breakage: str = ""  # invalid: which of BREAKAGES

    @property
    def payload(self) -> bytes:
        return self.fields[ev.PAYLOAD_FIELD.encode()]


#: About 70 % valid, 3 % redelivered, 27 % invalid, a few in a thousand that no column (or only
#: SQLite's) holds — each of those makes the recorder retry its whole batch one event at a time.
#: Hypothesis favours the ends of a list: valid messages are there, the rare kinds in the middle.
_CATEGORIES = (
    ["valid"] * 350
    + ["invalid"] * 135
    + ["unstorable"] * 3
    + ["too_long"] * 3
    + ["invalid"] * 135
    + ["redelivery"] * 30
    + ["valid"] * 344
)
BREAKAGES = [
    "not_json",
    "not_object",
    "no_payload",
    "unknown_version",
    "unknown_type",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "extra_field",
    "nul_text",
    "surrogate_text",
    "bad_timestamp",
    "deep",
    "not_utf8",
    "other_encoding",
]
# Built once: a strategy made inside a draw recomputes its label (over every element) each time.
categories = st.sampled_from(_CATEGORIES)
event_classes = st.sampled_from(EVENT_CLASSES)
run_indexes = st.integers(0, len(RUN_IDS) - 1)
one_in_20 = st.sampled_from([False] * 10 + [True] + [False] * 10)
one_in_40 = st.sampled_from([False] * 20 + [True] + [False] * 20)
#: Megabyte messages are few (each goes through Redis to three consumer groups, and malformed ones
#: into the dead letters three times): about ten in 10,000.
one_in_1000 = st.sampled_from([False] * 500 + [True] + [False] * 500)
breakages = st.sampled_from(BREAKAGES)


@st.composite
def drafts(draw: st.DrawFn) -> Draft:
    category = draw(categories)
    cls = draw(event_classes)
    run = draw(run_indexes)
    seq = draw(int64)
    ts = draw(timestamps)
    fields = draw(FIELDS[cls])
    extra: dict[bytes, bytes] = {}
    breakage: tuple[Any, ...] = ()
    if category == "valid":
        if draw(one_in_1000):  # 1 MB of text where a column holds any length
            cls, fields = (
                ev.RunFailed,
                {
                    "error_type": "MemoryError",
                    "message": megabyte_of(draw(text(1, 1))),
                    "traceback": "x" * MEGABYTE,
                },
            )
        if draw(one_in_20):
            extra = {b"trace\xff\xfe": draw(st.binary(max_size=8)) + b"\xc3\x28", b"v": b"\x80"}
    elif category == "invalid":
        how = draw(breakages)
        breakage = (how, *_breakage_details(draw, how, cls))
    elif category == "unstorable":  # beyond 64-bit integers: no column holds it, on any database
        big = draw(st.integers(INT64_MAX + 1, 2**80))
        cls, fields = ev.EpochEnd, {"epoch": big, "metrics": {"loss": 0.5}}
    elif category == "too_long":  # longer than its VARCHAR column
        which = draw(st.sampled_from(["host", "sha256", "metric"]))
        long_text = draw(
            st.sampled_from([lambda c: c * 300, lambda c: c * 5000, lambda c: c * 300, megabyte_of])
        )(draw(text(1, 1)))
        if which == "host":
            cls, fields = ev.RunStarted, {"name": "too-long", "host": long_text}
        elif which == "sha256":
            cls, fields = ev.CheckpointSaved, {"epoch": 1, "sha256": long_text[:65] + "x"}
        else:
            cls, fields = ev.EpochEnd, {"metrics": {long_text: 1.0}}
    return Draft(category, cls, fields, run, seq, ts, breakage, extra)


def _shape(annotation: Any) -> str:
    """int, float, bool, str, dict, list or literal: the JSON shape a field's annotation asks for."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "literal"
    if origin is dict or annotation is dict:
        return "dict"
    if origin is list:
        return "list"
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return "model"  # a nested object of its own schema (run_queued's sweep)
    return {int: "int", float: "float", bool: "bool", str: "str"}[annotation]


#: A value of each shape that is wrong for a field of every other shape (no lax coercion saves it).
WRONG = {
    "int": ["3", 1.5, True, [], {}],
    "float": ["0.5", True, [], {}],
    "bool": ["true", 1, 0, [], {}],
    "str": [3, 1.5, True, [], {}],
    "dict": [[], "x", 3],
    "list": [{}, "x", 3],
    "literal": ["no-such-value", 3, []],
    "model": [[], "x", 3, {}],  # {}: its required fields missing
}


def _breakage_details(draw: st.DrawFn, how: str, cls: type) -> tuple[Any, ...]:
    names = [n for n in cls.model_fields if n not in ("v", "type")]
    if how == "missing_field":
        required = ["v", "type"] + [n for n, f in cls.model_fields.items() if f.is_required()]
        return (draw(st.sampled_from(required)),)
    if how == "wrong_type":
        name = draw(st.sampled_from(names))
        return (name, draw(st.sampled_from(WRONG[_shape(cls.model_fields[name].annotation)])))
    if how == "out_of_range":  # past a bound the schema declares (ge=, min_length=, max_length=)
        choices = []
        for name in names:
            for bound in cls.model_fields[name].metadata:
                if isinstance(bound, annotated_types.Ge):
                    choices.append((name, bound.ge - 1))
                elif isinstance(bound, annotated_types.MinLen) and bound.min_length > 0:
                    choices.append((name, ""))
                elif isinstance(bound, annotated_types.MaxLen):
                    choices.append((name, "x" * (bound.max_length + 1)))
        return draw(st.sampled_from(choices))
    if how == "extra_field":  # a name the event does not have (drawing "id" would only retype a field)
        key = draw(text(10, 1).filter(lambda k: k not in cls.model_fields))
        key = megabyte_of(key) if draw(one_in_40) else key
        return (key, draw(json_values))
    if how in ("nul_text", "surrogate_text"):  # in a text field, a metric's name, or deep in free-form JSON
        bad = "\x00" if how == "nul_text" else draw(st.sampled_from(["\ud800", "\udfff", "\udbff"]))
        bad_text = draw(text(5)) + bad + draw(text(5))
        places = [(n, "value") for n in names if _shape(cls.model_fields[n].annotation) == "str"]
        places += [(n, "key") for n in ("metrics", "spec", "tags", "optimizer") if n in names]
        return (*draw(st.sampled_from(places)), bad_text)
    if how == "bad_timestamp":
        return (draw(st.sampled_from([float("nan"), float("inf"), float("-inf"), -1.0, 1e300, MAX_TS + 1])),)
    if how == "deep":
        return (
            draw(st.sampled_from([250, 1_000, 10_000, 100_000])),
            draw(st.sampled_from(["list", "dict", "inside"])),
        )
    if how == "not_utf8":
        return (
            draw(
                st.sampled_from(
                    [b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]
                )
            ),
            draw(st.integers(0, 10**6)),
        )
    if how == "other_encoding":
        return (draw(st.sampled_from(["utf-16", "utf-32", "utf-8-sig", "utf-16-le", "latin-1"])),)
    if how == "not_json":
        return (draw(text(30)),)
    if how == "not_object":
        return (draw(json_values.filter(lambda v: not isinstance(v, dict))),)
    if how == "no_payload":
        return (
            draw(
                st.dictionaries(
                    st.binary(max_size=6).filter(lambda k: k != b"event"),
                    st.binary(max_size=6),
                    min_size=1,
                    max_size=3,
                )
            ),
        )
    if how == "unknown_version":
        return (draw(st.sampled_from([0, 2, -1, "1", "01", 1.0, 1.5, True, None, [1], {"v": 1}, 10**30])),)
    if how == "unknown_type":
        return (
            "t" * MEGABYTE
            if draw(one_in_40)
            else draw(
                text(30).filter(lambda t: t not in ev.EVENT_TYPES)
                | st.sampled_from(["RUN_STARTED", "epoch_end ", None, 3, ["epoch_end"]])
            ),
        )
    raise AssertionError(how)


# -- from draft to stream entry ------------------------------------------------------------------
class MessageFactory:
    """Turns drafts into stream entries, with unique event ids, epochs (per run) and checkpoint paths."""

    def __init__(self) -> None:
        self.count = 0
        self._next_epoch: dict[str, int] = {}
        self.sent_valid: list[Message] = []

    def build(self, draft: Draft) -> Message:
        self.count += 1
        if draft.category == "redelivery":
            if self.sent_valid:
                original = self.sent_valid[draft.seq % len(self.sent_valid)]
                return Message(dict(original.fields), "valid", original.event, what="redelivery")
            draft = Draft("valid", draft.cls, draft.fields, draft.run, draft.seq, draft.ts)
        run_id = RUN_IDS[draft.run]
        fields = dict(draft.fields)
        if draft.cls is ev.EpochEnd and "epoch" not in fields:
            fields["epoch"] = self._epoch(run_id)
        if draft.cls is ev.CheckpointSaved:
            fields["path"] = f"/nonexistent/fitstream-fuzz/{self.count}/best.keras"
        event = ev.build(
            draft.cls, run_id=run_id, seq=draft.seq, ts=draft.ts, event_id=f"fuzz{self.count:012d}", **fields
        )
        entry = {k.encode(): v.encode() for k, v in ev.encode(event).items()}
        if draft.category in ("valid", "unstorable", "too_long"):
            message = Message(
                {**entry, **draft.extra_stream_fields},
                draft.category,
                event,
                what=f"{draft.category} {event.type}",
            )
            if draft.category == "valid":
                self.sent_valid.append(message)
            return message
        message = _break(entry, draft.breakage)
        message.breakage = draft.breakage[0]
        return message

    def _epoch(self, run_id: str) -> int:
        epoch = self._next_epoch.get(run_id, 0)
        self._next_epoch[run_id] = epoch + 1
        return epoch


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _field(name: str) -> str:
    """A pattern for a reason that names ``name`` (not merely ends with it: ``id`` is not ``run_id``),
    or a field inside it (``sweep.id: Field required`` for a nested object missing its fields)."""
    return rf"(?<![\w.]){re.escape(name)}(?:\.[\w.]+)?: "


def _invalid(payload: bytes, what: str, reason: str) -> Message:
    return Message({b"v": b"1", ev.PAYLOAD_FIELD.encode(): payload}, "invalid", reason=reason, what=what)


def _break(entry: dict[bytes, bytes], breakage: tuple[Any, ...]) -> Message:
    """Break a valid stream entry the way ``breakage`` says (its first item is one of BREAKAGES)."""
    how, *details = breakage
    payload = entry[ev.PAYLOAD_FIELD.encode()]
    data = json.loads(payload)
    if how == "not_json":
        return _invalid(b"{not json " + details[0].encode(), how, "not valid JSON")
    if how == "not_object":
        return _invalid(_dumps(details[0]), f"JSON {type(details[0]).__name__}", "must be a JSON object")
    if how == "no_payload":
        return Message(dict(details[0]), "invalid", reason="no 'event' field", what=how)
    if how == "unknown_version":
        data["v"] = details[0]
        return _invalid(_dumps(data), f"version {details[0]!r}", "unknown schema version")
    if how == "unknown_type":
        data["type"] = details[0]
        return _invalid(_dumps(data), f"type {details[0]!r}"[:80], "unknown event type")
    if how == "missing_field":
        name = details[0]
        del data[name]
        reason = {"v": "unknown schema version None", "type": "unknown event type None"}.get(
            name, _field(name) + "Field required"
        )
        return _invalid(_dumps(data), f"without {name}", reason)
    if how in ("wrong_type", "out_of_range"):
        name, value = details
        data[name] = value
        return _invalid(_dumps(data), f"{name}={value!r}"[:80], _field(name))
    if how == "extra_field":
        key, value = details
        data[key] = value
        return _invalid(
            _dumps(data), f"an extra field of {len(key)} characters", "Extra inputs are not permitted"
        )
    if how in ("nul_text", "surrogate_text"):
        name, where, bad_text = details
        if where == "value":
            data[name] = bad_text
        elif name == "metrics":
            data[name] = {**data[name], bad_text: 0.5}
        else:
            data[name] = (
                {"ok": {"deeper": [{bad_text: "x"}]}} if name in ("spec", "optimizer") else {bad_text: "x"}
            )
        reason = rf"(?<![\w.]){re.escape(name)}[.:].*" + ("U\\+0000" if how == "nul_text" else "surrogate")
        return _invalid(_dumps(data), f"{how} in {name} ({where})", reason)
    if how == "bad_timestamp":
        data["ts"] = details[0]
        return _invalid(_dumps(data), f"ts={details[0]!r}", _field("ts"))
    if how == "deep":
        depth, where = details
        if where == "list":
            deep = b"[" * depth + b"]" * depth
        elif where == "dict":
            deep = b'{"a":' * depth + b"1" + b"}" * depth
        else:  # a run_queued event, valid but for the depth of its free-form spec
            envelope = {k: data[k] for k in ("v", "id", "run_id", "seq", "ts")}
            deep = (
                _dumps({**envelope, "type": "run_queued", "name": "n", "queue": "q"})[:-1]
                + b',"spec":{"x":'
                + b"[" * depth
                + b"]" * depth
                + b"}}"
            )
        return _invalid(deep, f"nested {depth} deep ({where})", "nested")
    if how == "not_utf8":
        bad, position = details
        at = position % (len(payload) + 1)
        return _invalid(payload[:at] + bad + payload[at:], f"invalid UTF-8 {bad!r}", "UTF-8")
    if how == "other_encoding":
        encoding = details[0]
        text_payload = payload.decode()
        if encoding == "latin-1":  # non-ASCII text in another 8-bit encoding is not UTF-8
            text_payload = text_payload[:-1] + ',"é":"ÿ"}'
        return _invalid(text_payload.encode(encoding), f"payload in {encoding}", "UTF-8|JSON")
    raise AssertionError(how)
