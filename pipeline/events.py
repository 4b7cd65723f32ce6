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

Sequence numbers are allocated here, for every origin, so that a run's events from
all of them sort in the order they happened (see :func:`attempt_first_seq` and
:func:`promotion_seq`)::

    run_queued               0                      (fitstream submit)
    cancelled before start   1                      (fitstream cancel of a queued job)
    training attempt N       N × 1,000,000 + i      (the publisher, attempt 1, 2, …)
    promoter                 10¹³ + 4 × trigger + k (after everything the run published)

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
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pipeline.errors import InvalidEventError
from pipeline.params import ParamValue

SCHEMA_VERSION = 1
#: Name of the single field that carries the JSON payload in a stream entry.
PAYLOAD_FIELD = "event"
VERSION_FIELD = "v"
#: Deepest nesting of objects and arrays a payload may have (a job spec needs a handful of levels).
MAX_NESTING = 64
#: 9999-12-31 23:59:59 UTC: the last second a timestamp column (and a Python datetime) can hold.
MAX_TS = 253_402_300_799.0

RunStatus = Literal["completed", "early_stopped", "failed", "cancelled", "pruned"]
#: Every status a run can have, in the order a run moves through them, and the terminal ones.
#: ``pruned``: a sweep trial stopped early because it fell behind its sweep (see pipeline.pruning).
RUN_STATUSES = ("queued", "running", "completed", "early_stopped", "failed", "cancelled", "pruned")
TERMINAL_STATUSES = ("completed", "early_stopped", "failed", "cancelled", "pruned")
#: A run that trained to its own end: what `submit --wait` and `watch` exit 0 for.
SUCCESSFUL_STATUSES = ("completed", "early_stopped")
#: Terminal statuses of a run that did not train to its own end: nothing of it is promoted.
STOPPED_FROM_OUTSIDE = ("cancelled", "pruned")
Mode = Literal["min", "max"]
#: Where a checkpoint file came from: a ModelCheckpoint, or the model EarlyStopping restored
#: to its best weights, saved once at the end of training.
CheckpointSource = Literal["model_checkpoint", "early_stopping_restore"]

# -- sequence numbers: one allocation for every origin -------------------------------------
#: The queue path's own events (``fitstream submit`` and ``cancel``) come first.
QUEUED_SEQ = 0
CANCELLED_BEFORE_START_SEQ = 1
#: Training attempt N numbers its events from N × ATTEMPT_BLOCK.
ATTEMPT_BLOCK = 1_000_000
MAX_ATTEMPTS = 9_999
#: The promoter's events follow everything a run's attempts can publish.
PROMOTION_BASE = 10**13
PROMOTION_OUTCOMES = ("promotion_skipped", "model_promoted", "champion_kept")


def attempt_first_seq(attempt: int) -> int:
    """The first sequence number of training attempt ``attempt`` (1 for the first try).

    Example:
        >>> attempt_first_seq(2)
        2000000
    """
    if not isinstance(attempt, int) or not 1 <= attempt <= MAX_ATTEMPTS:
        raise ValueError(f"attempt must be an integer from 1 to {MAX_ATTEMPTS}; got {attempt!r}")
    return attempt * ATTEMPT_BLOCK


def promotion_seq(trigger_seq: int, outcome: str) -> int:
    """The sequence number of the promoter's ``outcome`` event for the event ``trigger_seq``
    (``early_stopped`` or ``run_finished``): after every event of the run, in trigger order,
    and the same on every redelivery of the trigger.

    Example:
        >>> promotion_seq(1_000_042, "model_promoted") > attempt_first_seq(MAX_ATTEMPTS) + ATTEMPT_BLOCK
        True
    """
    return PROMOTION_BASE + trigger_seq * len(PROMOTION_OUTCOMES) + PROMOTION_OUTCOMES.index(outcome)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The integer 1: not 1.0, not true (``Literal[1]`` would take both, as equal to 1).
    v: int = Field(default=SCHEMA_VERSION, ge=SCHEMA_VERSION, le=SCHEMA_VERSION, strict=True)
    id: str = Field(min_length=1, max_length=64)
    run_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    ts: float = Field(
        ge=0,
        le=MAX_TS,
        allow_inf_nan=False,
        description="Unix time (seconds) at which the event happened: 1970 to 9999.",
    )


class MonitoringCallback(BaseModel):
    """Settings of one of Keras' monitoring callbacks, as reported in ``run_started``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["early_stopping", "model_checkpoint", "reduce_lr_on_plateau"]
    monitor: str
    mode: str
    settings: dict[str, Any] = Field(default_factory=dict)


class SweepTrial(BaseModel):
    """Which sweep a queued run is a trial of (see pipeline.sweeps). The first trial's event
    carries the sweep's own section too, so that the recorder can write the ``sweeps`` row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    name: str
    trial: int = Field(ge=0)
    trials: int = Field(ge=1)
    spec: dict[str, Any] | None = None


class RunQueued(_Event):
    """A job was accepted and queued (published by ``fitstream submit``)."""

    type: Literal["run_queued"] = "run_queued"
    name: str
    queue: str
    spec: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    params: dict[str, ParamValue] = Field(default_factory=dict, description="See pipeline.params.")
    sweep: SweepTrial | None = None


class RunStarted(_Event):
    type: Literal["run_started"] = "run_started"
    name: str
    model_name: str | None = None
    params_count: int | None = None
    optimizer: dict[str, Any] | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    monitor: str | None = None
    mode: Mode | None = None
    callbacks: list[MonitoringCallback] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    host: str | None = None
    pid: int | None = None
    data_fingerprint: str | None = Field(default=None, max_length=80, description="See pipeline.fingerprint.")
    params: dict[str, ParamValue] = Field(default_factory=dict, description="See pipeline.params.")


class EpochEnd(_Event):
    type: Literal["epoch_end"] = "epoch_end"
    epoch: int = Field(ge=0, description="Counted from 0, as Keras counts.")
    metrics: dict[str, float | None]
    learning_rate: float | None = None
    wall_time_s: float | None = None
    steps: int | None = None
    samples_per_second: float | None = None
    steps_per_second: float | None = None


class BatchEnd(_Event):
    type: Literal["batch_end"] = "batch_end"
    epoch: int = Field(ge=0)
    batch: int = Field(ge=0, description="Counted from 0 within the epoch.")
    step: int | None = Field(
        default=None, ge=0, description="Counted from 0 across epochs (batch_metrics' step)."
    )
    metrics: dict[str, float | None]


class CheckpointSaved(_Event):
    type: Literal["checkpoint_saved"] = "checkpoint_saved"
    path: str
    epoch: int = Field(ge=0)
    monitor: str | None = None
    value: float | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    mode: Mode | None = Field(
        default=None, description="The direction the saving callback used for `monitor`."
    )
    source: CheckpointSource = "model_checkpoint"
    batch: int | None = Field(
        default=None, ge=0, description="Set for a batch-level checkpoint (save_freq=N)."
    )


class LearningRateChanged(_Event):
    type: Literal["lr_changed"] = "lr_changed"
    epoch: int = Field(ge=0)
    old: float
    new: float
    reason: str | None = None
    monitor: str | None = None
    mode: Mode | None = None


class EarlyStopped(_Event):
    type: Literal["early_stopped"] = "early_stopped"
    stopped_epoch: int = Field(ge=0)
    best_epoch: int = Field(ge=0)
    best_value: float | None
    monitor: str
    mode: Mode
    patience: int | None = None
    min_delta: float | None = None
    restore_best_weights: bool = False


class RunFinished(_Event):
    type: Literal["run_finished"] = "run_finished"
    status: RunStatus
    epochs_completed: int = Field(ge=0)
    wall_time_s: float | None = None
    best_epoch: int | None = None
    best_value: float | None = None
    monitor: str | None = None
    mode: Mode | None = None
    restored_best_weights: bool = False
    reason: str | None = Field(
        default=None, max_length=2000, description="Why a run was cancelled or pruned."
    )


class RunFailed(_Event):
    type: Literal["run_failed"] = "run_failed"
    error_type: str
    message: str
    traceback: str | None = None


class ModelPromoted(_Event):
    """A run's best checkpoint became a model version (published by the promoter)."""

    type: Literal["model_promoted"] = "model_promoted"
    name: str
    version: int = Field(ge=1)
    epoch: int | None = None
    metric: str | None = None
    mode: Mode | None = None
    value: float | None = None
    aliases: list[str] = Field(default_factory=list)
    champion: bool = False
    previous_champion_version: int | None = None
    previous_champion_value: float | None = None
    source: CheckpointSource | None = None
    champion_reason: str | None = Field(
        default=None, description="Why `champion` did not move, when it did not."
    )


class PromotionSkipped(_Event):
    type: Literal["promotion_skipped"] = "promotion_skipped"
    name: str | None = None
    reason: str


Event = Annotated[
    RunQueued
    | RunStarted
    | EpochEnd
    | BatchEnd
    | CheckpointSaved
    | LearningRateChanged
    | EarlyStopped
    | RunFinished
    | RunFailed
    | ModelPromoted
    | PromotionSkipped,
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[str, ...] = (
    "run_queued",
    "run_started",
    "epoch_end",
    "batch_end",
    "checkpoint_saved",
    "lr_changed",
    "early_stopped",
    "run_finished",
    "run_failed",
    "model_promoted",
    "promotion_skipped",
)

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
