"""What passes between the consume loop and a handler.

A handler receives :class:`Received` events (decoded, with the payload as it was sent) and provides
the :class:`Handler` protocol. :func:`decode_batch` turns the stream messages of one read into a
:class:`ReadBatch`: the events a handler takes, the messages that could not be decoded (with the
reason, for the dead-letter stream) and, for a handler with ``prepare``, its prepared rows.
Decoding has no side effects, so the consume loop may run it on its reader thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline import events as ev
from pipeline.bus import StreamMessage
from pipeline.errors import InvalidEventError


@dataclass(frozen=True)
class Received:
    """A decoded event with its stream id and its payload as it was sent."""

    message_id: str
    event: ev.Event
    payload: str


class Handler(Protocol):
    """What a consumer does with events. ``handle`` commits its whole batch or raises.
    An ``ordered`` handler (attribute, default False) gets its group's events in stream order.
    A handler may also have ``prepare(batch)``, pure work without side effects that the loop runs
    ahead on its reader thread; its result comes back as ``handle(batch, prepared)``. And it may
    have ``maintain()``, its periodic work, called between two rounds (about every ``block_ms``
    when idle); it must not raise."""

    group: str

    def handle(self, batch: Sequence[Received]) -> None: ...


@dataclass
class ReadBatch:
    """Messages read and decoded, not yet handled."""

    messages: Sequence[StreamMessage]
    received: list[Received]
    invalid: list[tuple[StreamMessage, str]]
    prepared: Any = None


def decode_batch(handler: Handler, messages: Sequence[StreamMessage]) -> ReadBatch:
    """Decode (no side effects: it may run on the reader thread)."""
    received: list[Received] = []
    invalid: list[tuple[StreamMessage, str]] = []
    for message in messages:
        try:
            event = ev.decode(message.fields)
        except InvalidEventError as exc:
            invalid.append((message, str(exc)))
            continue
        raw = message.fields.get(ev.PAYLOAD_FIELD.encode(), b"")
        received.append(
            Received(message.message_id, event, raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
        )
    read = ReadBatch(messages, received, invalid)
    prepare = getattr(handler, "prepare", None)
    if prepare is not None and received:
        try:
            read.prepared = prepare(received)
        except Exception:  # handle() meets the same problem again, and isolates the event
            read.prepared = None
    return read
