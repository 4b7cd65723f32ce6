"""What ``fitstream status`` says about the event stream: per shard, and summed over the shards.

Example:
    >>> report = stream_report(EventStream())     # doctest: +SKIP
    >>> [(s["shard"], s["length"]) for s in report["shards"]]   # doctest: +SKIP
    [(0, 1234)]
"""

from __future__ import annotations

from typing import Any

from pipeline.bus import EventStream
from pipeline.consumers.base import leader_key


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def shard_groups(shard: EventStream) -> list[dict[str, Any]]:
    """One shard's consumer groups: consumers, pending, lag, leader, paused consumers."""
    return [
        {
            "group": g["name"],
            "consumers": g.get("consumers"),
            "pending": g.get("pending"),
            "lag": g.get("lag"),
            "leader": _text(shard.client.get(leader_key(shard.stream, g["name"]))),
            "paused": shard.consumer_states(g["name"]),
        }
        for g in shard.groups()
    ]


def _summed_groups(per_shard: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each group over every shard: pending and lag added up (lag unknown if any shard's is),
    the most consumers any shard has, the leaders named once."""
    merged: dict[str, dict[str, Any]] = {}
    for groups in per_shard:
        for group in groups:
            total = merged.get(group["group"])
            if total is None:
                merged[group["group"]] = {**group, "paused": dict(group["paused"])}
                continue
            total["consumers"] = max(total["consumers"] or 0, group["consumers"] or 0)
            total["pending"] = (total["pending"] or 0) + (group["pending"] or 0)
            total["lag"] = (
                None if total["lag"] is None or group["lag"] is None else total["lag"] + group["lag"]
            )
            leaders = [name for name in (total["leader"] or "").split(", ") if name]
            if group["leader"] and group["leader"] not in leaders:
                leaders.append(group["leader"])
            total["leader"] = ", ".join(leaders) or None
            total["paused"].update(group["paused"])
    return list(merged.values())


def stream_report(stream: EventStream) -> dict[str, Any]:
    """The stream's part of ``fitstream status --json``.

    ``stream`` (base name, total length, shard count), ``consumer_groups`` (summed over the shards),
    ``shards`` (each shard's stream key, length, groups and dead letters), ``dead_letters``,
    ``dead_letters_by_reason``, ``forced_trims`` (summed), ``redis_warnings``.
    """
    shards = []
    by_reason: dict[str, int] = {}
    trims: dict[str, int | float] = {}
    for shard in stream.all_shards():
        groups = shard_groups(shard)
        dead = shard.dead_letter_count()
        shards.append(
            {
                "shard": shard.shard,
                "stream": shard.stream,
                "length": int(shard.client.xlen(shard.stream)),
                "consumer_groups": groups,
                "dead_letters": dead,
            }
        )
        for kind, count in shard.dead_letter_kinds().items():
            by_reason[kind] = by_reason.get(kind, 0) + count
        for key, value in shard.forced_trims().items():
            trims[key] = max(trims.get(key, 0), value) if key == "last_at" else trims.get(key, 0) + value
    return {
        "stream": {
            "name": stream.base_stream,
            "length": sum(s["length"] for s in shards),
            "shards": len(shards),
        },
        "consumer_groups": _summed_groups([s["consumer_groups"] for s in shards]),
        "shards": shards,
        "dead_letters": sum(s["dead_letters"] for s in shards),
        "dead_letters_by_reason": by_reason,
        "forced_trims": trims,
        "redis_warnings": stream.safety_warnings(),
    }
