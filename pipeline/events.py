"""The versioned event schema: the only contract between training and the consumers.

An event is a JSON object with a common envelope (``v``, ``id``, ``run_id``,
``seq``, ``ts``, ``type``) and the fields of its type. ``id`` is unique per
event and ``(run_id, seq)`` orders a run's events, so every consumer can make
its effect idempotent.

Example:
    >>> from pipeline import events
    >>> e = events.build(events.EpochEnd, run_id="r1", seq=3, epoch=0, metrics={"loss": 0.5})
    >>> fields = events.encode(e)
    >>> events.decode(fields).metrics["loss"]
    0.5

Unknown versions and malformed payloads raise :class:`InvalidEventError`
with a reason; consumers dead-letter them, they never guess. Decoding takes a payload as it is
or refuses it: it must be UTF-8 JSON, name version ``1`` (the integer), give every value its own
type (no ``"3"`` for 3, no ``true`` for 1), nest at most :data:`MAX_NESTING` levels deep, hold
no text SQL cannot store (U+0000, an unpaired surrogate), and happen at a finite time between
1970 and the year 9999 (:data:`MAX_TS`). NaN and infinities are values like any other
(Keras logs them).

Every producer and consumer goes through this module. It holds the wire format (:func:`build`,
:func:`encode`, :func:`decode`) and re-exports the rest of the schema: the event types, run
statuses and :data:`SCHEMA_VERSION` (:mod:`pipeline.event_models`), and the sequence numbers,
allocated for every origin so that a run's events from all of them sort in the order they
happened (:mod:`pipeline.event_sequence`: :func:`attempt_first_seq`, :func:`promotion_seq`).

Direction: ``checkpoint_saved``, ``early_stopped``, ``run_finished`` and ``lr_changed`` carry
the ``mode`` the Keras callback actually used (read from the callback), so consumers never
guess it from a metric's name (:meth:`pipeline.monitor.Monitor.from_event`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from pipeline.errors import InvalidEventError

# The schema's types and sequence numbers live in their own modules; everyone imports them from here.
from pipeline.event_models import (
    EVENT_TYPES,
    MAX_TS,
    RUN_STATUSES,
    SCHEMA_VERSION,
    STOPPED_FROM_OUTSIDE,
    SUCCESSFUL_STATUSES,
    TERMINAL_STATUSES,
    BatchEnd,
    CheckpointSaved,
    CheckpointSource,
    EarlyStopped,
    EpochEnd,
    Event,
    LearningRateChanged,
    Mode,
    ModelPromoted,
    MonitoringCallback,
    PromotionSkipped,
    RunFailed,
    RunFinished,
    RunQueued,
    RunStarted,
    RunStatus,
    SweepTrial,
    _Event,
)
from pipeline.event_sequence import (
    ATTEMPT_BLOCK,
    CANCELLED_BEFORE_START_SEQ,
    MAX_ATTEMPTS,
    PROMOTION_BASE,
    PROMOTION_OUTCOMES,
    QUEUED_SEQ,
    attempt_first_seq,
    promotion_seq,
)

__all__ = [
    "SCHEMA_VERSION",
    "MAX_TS",
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "SUCCESSFUL_STATUSES",
    "STOPPED_FROM_OUTSIDE",
    "EVENT_TYPES",
    "RunStatus",
    "Mode",
    "CheckpointSource",
    "Event",
    "_Event",
    "MonitoringCallback",
    "SweepTrial",
    "RunQueued",
    "RunStarted",
    "EpochEnd",
    "BatchEnd",
    "CheckpointSaved",
    "LearningRateChanged",
    "EarlyStopped",
    "RunFinished",
    "RunFailed",
    "ModelPromoted",
    "PromotionSkipped",
    "QUEUED_SEQ",
    "CANCELLED_BEFORE_START_SEQ",
    "ATTEMPT_BLOCK",
    "MAX_ATTEMPTS",
    "PROMOTION_BASE",
    "PROMOTION_OUTCOMES",
    "attempt_first_seq",
    "promotion_seq",
    "PAYLOAD_FIELD",
    "VERSION_FIELD",
    "MAX_NESTING",
    "build",
    "new_event_id",
    "stable_event_id",
    "to_float",
    "encode",
    "decode",
    "decode_dict",
    "unstorable_text",
]

#: Name of the single field that carries the JSON payload in a stream entry.
PAYLOAD_FIELD = "event"
VERSION_FIELD = "v"
#: Deepest nesting of objects and arrays a payload may have (a job spec needs a handful of levels).
MAX_NESTING = 64

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
E = TypeVar("E", bound=_Event)


def new_event_id() -> str:
    return uuid.uuid4().hex


def build(
    cls: type[E],
    *,
    run_id: str,
    seq: int,
    ts: float | None = None,
    event_id: str | None = None,
    **fields: Any,
) -> E:
    """Make an event of type ``cls`` with a fresh id (or ``event_id``, for an event that may be
    announced again and must stay one event).

    Example:
        >>> build(RunFailed, run_id="r1", seq=9, error_type="OSError", message="disk full").type
        'run_failed'
    """
    return cls(
        id=event_id or new_event_id(), run_id=run_id, seq=seq, ts=time.time() if ts is None else ts, **fields
    )


def stable_event_id(run_id: str, seq: int) -> str:
    """The same id every time for a run's event ``seq`` (consumers store an event once per id)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"fitstream:{run_id}:{seq}").hex


def to_float(value: Any) -> float | None:
    """A log value as a plain float (numpy scalars, 0-d tensors); None when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _json_default(value: Any) -> Any:
    converted = to_float(value)
    if converted is None:
        return str(value)
    return converted


def encode(event: _Event) -> dict[str, str]:
    """Stream-entry fields for ``event``. NaN and infinities survive (as JSON ``NaN``/``Infinity``)."""
    payload = json.dumps(event.model_dump(mode="python"), default=_json_default, separators=(",", ":"))
    return {VERSION_FIELD: str(event.v), PAYLOAD_FIELD: payload}


def _clip(text: str, limit: int = 120) -> str:
    """``text`` as a reason shows it: NUL and unpaired surrogates escaped (a reason is stored and
    logged as UTF-8), at most ``limit`` characters of it (a payload may hold megabytes)."""
    shown = text[: limit + 1].replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return (
        shown
        if len(shown) <= limit and len(text) <= limit
        else f"{shown[:limit]}… ({len(text):,} characters)"
    )


def _shown(value: Any) -> str:
    return (
        _clip(repr(value))
        if not isinstance(value, (list, dict))
        else _clip(json.dumps(value, default=repr)[:1000])
    )


#: Escapes that can spell text SQL cannot store (``\u0000``, surrogates). Where none appears, no
#: string in the payload holds such text, and the fast path need not look at each one.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_SUSPECT_ESCAPE_BYTES = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def decode(fields: Mapping[Any, Any]) -> Event:
    """Parse and validate one stream entry's fields.

    Raises:
        InvalidEventError: with the reason, for a missing payload, one that is not UTF-8 JSON or
            nests too deeply, an unknown schema version or event type, or a field that fails
            validation.
    """
    raw = fields.get(PAYLOAD_FIELD, fields.get(PAYLOAD_FIELD.encode()))
    if raw is None:
        present = sorted(
            _clip(k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else str(k), 40)
            for k in fields
        )
        raise InvalidEventError(f"no {PAYLOAD_FIELD!r} field in stream entry (fields: {present[:20]})")
    if isinstance(raw, (bytes, bytearray)):
        brackets, suspect = raw.count(b"{") + raw.count(b"["), _SUSPECT_ESCAPE_BYTES.search(raw)
    else:
        raw = str(raw)
        brackets, suspect = raw.count("{") + raw.count("["), _SUSPECT_ESCAPE.search(raw)
    if brackets <= MAX_NESTING and suspect is None:
        try:
            # Fast path: pydantic-core checks the UTF-8, parses and validates the JSON in one pass.
            event = _ADAPTER.validate_json(raw, strict=True)
        except (ValidationError, ValueError):
            pass  # parse again the slow way, to say exactly what is wrong
        else:
            if VERSION_FIELD in event.model_fields_set:  # no default stands in for a missing version
                return event
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError as exc:
        raise InvalidEventError(f"payload is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise InvalidEventError(f"payload is nested more than {MAX_NESTING} levels deep") from None
    except ValueError as exc:
        raise InvalidEventError(f"payload is not valid JSON: {exc}") from None
    return decode_dict(data)


def decode_dict(data: Any) -> Event:
    """Validate an already-parsed event object (see :func:`decode`)."""
    if _nesting(data) > MAX_NESTING:
        raise InvalidEventError(f"payload is nested more than {MAX_NESTING} levels deep")
    if not isinstance(data, dict):
        raise InvalidEventError(f"payload must be a JSON object, got {type(data).__name__}")
    version = data.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise InvalidEventError(
            f"unknown schema version {_shown(version)}; this Fitstream understands version {SCHEMA_VERSION}"
        )
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise InvalidEventError(f"unknown event type {_shown(kind)}; known types: {', '.join(EVENT_TYPES)}")
    problem = unstorable_text(data)
    if problem is not None:
        raise InvalidEventError(problem)
    try:
        return _ADAPTER.validate_python(data, strict=True)
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(
            f"{_clip('.'.join(str(p) for p in err['loc'][1:]) or '<event>')}: {err['msg']}"
            for err in errors[:10]
        )
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise InvalidEventError(f"invalid {kind} event: {problems}{more}") from None


def _nesting(data: Any) -> int:
    """How many objects and arrays deep ``data`` goes (walked without recursion; stops past the limit)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_NESTING:
                return deepest
            stack.extend(
                (child, depth + 1) for child in (value.values() if isinstance(value, dict) else value)
            )
    return deepest


def unstorable_text(data: Any) -> str | None:
    """Where ``data`` (parsed JSON or YAML, or a string) holds text no SQL database stores, and what:
    U+0000 (PostgreSQL refuses it) or an unpaired surrogate (not Unicode; no UTF-8 encoder takes it).
    None when there is none. Job specs and alert rules, which end up in events and tables, use it too.

    Example:
        >>> unstorable_text({"tags": {"team": "a\\x00b"}})
        'tags.team: text holds U+0000 (NUL), which SQL text cannot store'
    """
    stack: list[tuple[str, Any, Any]] = [("", None, data)]
    while stack:
        path, key, value = stack.pop()
        for what, text in (("a key", key), ("text", value)):
            if not isinstance(text, str):
                continue
            where = _clip(path) or "(top level)"
            if "\x00" in text:
                return f"{where}: {what} holds U+0000 (NUL), which SQL text cannot store"
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                code = ord(text[exc.start])
                return (
                    f"{where}: {what} holds an unpaired surrogate (U+{code:04X}), which is not Unicode text"
                )
        if isinstance(value, dict):
            stack.extend((f"{path}.{_key(k)}" if path else _key(k), k, v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), None, v) for i, v in enumerate(value))
    return None


def _key(key: Any) -> str:
    """A key in a path as a reason shows it: as written, or quoted (escaped) when it is empty, holds
    a dot, anything unprintable or blanks at an end."""
    text = str(key)
    return text if text and text.isprintable() and "." not in text and text.strip() == text else repr(text)
