"""Dead letters, as an operator's tool: list them, look at one, send them back, purge old ones.

A consumer dead-letters a message it cannot decode, or one its handler fails on by itself, into
``<stream>:dead`` with the reason and the original fields. A replay puts the original event back on
the stream — same payload, same event ``id``, so every consumer keeps it once — and removes it from
the dead letters in the same atomic step, so a replay happens once even when two operators try.

On a sharded stream each shard has its own dead letters (on the shard's node of a Redis Cluster);
their ids then name the shard, ``<shard>/<stream id>`` (``2/1795664000000-0``), and a replay puts
the event back on that shard, where its run's events are.

Example:
    >>> letters = list_dead_letters(EventStream())             # doctest: +SKIP
    >>> replay(EventStream(), [letters[0].id])                  # doctest: +SKIP
    ['1795664000000-0']
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.bus import EventStream, _sid
from pipeline.errors import ConfigurationError, RunNotFoundError

#: Puts a dead letter's original fields back on the stream and removes it, atomically (once).
_REPLAY = """
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entry == 0 then return false end
local fields, out, group, kind = entry[1][2], {}, nil, nil
for i = 1, #fields, 2 do
  local k, v = fields[i], fields[i + 1]
  if string.sub(k, 1, 5) == 'orig.' then
    table.insert(out, string.sub(k, 6)); table.insert(out, v)
  elseif k == 'group' then group = v
  elseif k == 'kind' then kind = v end
end
if #out == 0 then return false end
local new_id = redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
if group then redis.call('HINCRBY', KEYS[3], group, -1) end
if kind then redis.call('HINCRBY', KEYS[4], kind, -1) end
return new_id
"""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: Longer ago than any stream entry can be (10,000 years).
MAX_DURATION_S = 10_000 * 365.25 * 86400
_DEAD_ID = re.compile(r"^(?:(\d{1,4})/)?(\d{1,20}-\d{1,20})$")
#: Both halves of a stream id are unsigned 64-bit integers.
_MAX_ID_PART = 2**64 - 1


@dataclass(frozen=True)
class DeadLetter:
    id: str
    group: str | None
    kind: str | None
    reason: str
    event_type: str | None
    run_id: str | None
    event_id: str | None
    source_id: str | None
    at: float  # Unix time it was dead-lettered
    payload: str | None = field(default=None, repr=False)


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``12h``, ``7d`` or ``2w``.

    Example:
        >>> parse_duration("12h"), parse_duration("7d")
        (43200.0, 604800.0)
    """
    match = _DURATION.match(text or "")
    if not match:
        raise ConfigurationError(f"not a duration: {text!r}; use a number and a unit, e.g. 30m, 12h, 7d")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not seconds <= MAX_DURATION_S:  # also infinity, from a number with hundreds of digits
        raise ConfigurationError(
            f"duration {text!r} is longer than 10,000 years; use a number and a unit, e.g. 30m, 12h, 7d"
        )
    return seconds


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _letter(entry_id: Any, fields: dict[Any, Any], shard: EventStream | None = None) -> DeadLetter:
    fields = {_text(k): v for k, v in fields.items()}
    payload = _text(fields.get("orig.event"))
    event: dict[str, Any] = {}
    try:
        parsed = json.loads(payload) if payload else None
        event = parsed if isinstance(parsed, dict) else {}
    except ValueError:
        pass
    entry = _sid(entry_id)
    return DeadLetter(
        id=f"{shard.shard}/{entry}" if shard is not None and shard.shard_count > 1 else entry,
        group=_text(fields.get("group")),
        kind=_text(fields.get("kind")),
        reason=_text(fields.get("reason")) or "",
        event_type=_str_or_none(event.get("type")),
        run_id=_str_or_none(event.get("run_id")),
        event_id=_str_or_none(event.get("id")),
        source_id=_text(fields.get("source_id")),
        at=int(entry.split("-")[0]) / 1000,
        payload=payload,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def list_dead_letters(
    stream: EventStream, *, group: str | None = None, limit: int = 1000
) -> list[DeadLetter]:
    """The most recent dead letters first (at most ``limit``, over every shard), optionally of one consumer group."""
    letters = []
    for shard in stream.all_shards():
        found = 0
        for entry_id, fields in shard.client.xrevrange(
            shard.dead_letter_stream, count=max(limit * (4 if group else 1), limit)
        ):
            letter = _letter(entry_id, fields, shard)
            if group is None or letter.group == group:
                letters.append(letter)
                found += 1
            if found >= limit:
                break
    letters.sort(key=lambda letter: letter.at, reverse=True)
    return letters[:limit]


def _locate(stream: EventStream, letter_id: str) -> tuple[EventStream, str]:
    """The shard a dead-letter id names, and its entry id there."""
    match = _DEAD_ID.match(letter_id or "")
    if not match or any(int(part) > _MAX_ID_PART for part in match.group(2).split("-")):
        raise ConfigurationError(
            f"not a dead-letter id: {letter_id!r} (ids look like 1795664000000-0, or 2/1795664000000-0 "
            "on a sharded stream; list them with: fitstream dead-letters list)"
        )
    shard = int(match.group(1) or 0)
    if match.group(1) is None and stream.shard_count > 1:
        raise ConfigurationError(
            f"dead-letter id {letter_id!r} names no shard: the stream has {stream.shard_count} shards, "
            "so ids look like 2/1795664000000-0; list them with: fitstream dead-letters list"
        )
    if shard >= stream.shard_count:
        raise RunNotFoundError(
            f"no dead letter {letter_id}: there is no shard {shard} (FITSTREAM_STREAM_SHARDS is {stream.shard_count})"
        )
    return stream.for_shard(shard), match.group(2)


def get_dead_letter(stream: EventStream, letter_id: str) -> DeadLetter:
    shard, entry_id = _locate(stream, letter_id)
    entries = shard.client.xrange(shard.dead_letter_stream, entry_id, entry_id)
    if not entries:
        raise RunNotFoundError(f"no dead letter {letter_id}; list them with: fitstream dead-letters list")
    return _letter(*entries[0], shard)


def replay(stream: EventStream, letter_ids: Iterable[str]) -> list[str]:
    """Put each dead letter's original event back on the stream, once; returns the new stream ids.

    Raises:
        RunNotFoundError: an id that is not (or no longer) a dead letter — nothing after it is replayed.
    """
    script = stream.client.register_script(_REPLAY)
    replayed = []
    for letter_id in letter_ids:
        get_dead_letter(stream, letter_id)  # a clear error for a bad or unknown id
        shard, entry_id = _locate(stream, letter_id)
        # One shard's keys share its hash tag: one slot, so the script may touch them all on a cluster.
        keys = [
            shard.dead_letter_stream,
            shard.stream,
            shard.dead_letter_counts_key,
            shard.dead_letter_kinds_key,
        ]
        new_id = script(keys=keys, args=[entry_id])
        if new_id is None:
            raise RunNotFoundError(f"dead letter {letter_id} was replayed or purged meanwhile")
        replayed.append(_sid(new_id))
    return replayed


def purge(stream: EventStream, *, older_than_s: float, now: float | None = None) -> int:
    """Delete dead letters (of every shard) older than ``older_than_s`` seconds; returns how many."""
    cutoff_ms = int(((time.time() if now is None else now) - older_than_s) * 1000)
    if cutoff_ms <= 0:
        return 0  # before 1970: no stream entry is that old
    return sum(_purge_shard(shard, cutoff_ms) for shard in stream.all_shards())


def _purge_shard(stream: EventStream, cutoff_ms: int) -> int:
    removed = 0
    while True:
        entries = stream.client.xrange(stream.dead_letter_stream, "-", f"({cutoff_ms}-0", count=500)
        if not entries:
            return removed
        pipe = stream.client.pipeline(transaction=True)
        for entry_id, fields in entries:
            letter = _letter(entry_id, fields)
            pipe.xdel(stream.dead_letter_stream, entry_id)
            if letter.group:
                pipe.hincrby(stream.dead_letter_counts_key, letter.group, -1)
            if letter.kind:
                pipe.hincrby(stream.dead_letter_kinds_key, letter.kind, -1)
        pipe.execute()
        removed += len(entries)
