"""Following one run's events on the stream (for ``watch`` and ``submit --wait``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.errors import InvalidEventError


def follow_run(
    stream: EventStream,
    run_id: str,
    *,
    start_id: str = "0",
    timeout: float | None = None,
    block_ms: int = 1000,
) -> Iterator[ev.Event]:
    """Yield ``run_id``'s events from ``start_id`` on, live, until its ``run_finished`` (or ``timeout``)."""
    stream = stream.for_run(run_id)  # a run's events are all on its shard
    last = start_id
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        reply = stream.client.xread({stream.stream: last}, count=1000, block=block_ms)
        for _name, entries in reply or []:
            for message_id, fields in entries:
                last = message_id.decode() if isinstance(message_id, bytes) else message_id
                try:
                    event = ev.decode(fields)
                except InvalidEventError:
                    continue
                if event.run_id != run_id:
                    continue
                yield event
                if event.type == "run_finished":
                    return


def stream_id_at(timestamp: float) -> str:
    """The first stream id at or after ``timestamp`` (Unix seconds)."""
    return f"{max(0, int(timestamp * 1000) - 1)}-0"
