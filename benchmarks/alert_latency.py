"""Alert latency: ``epoch_end`` published → webhook received, under load.

Load: ``--runs`` runs (default 100) each publish an ``epoch_end`` every ``--interval`` seconds
(default 0.1 s → 1,000 events/s) for ``--seconds``. ``--alerting`` of them (default 10)
alternate their metric above/below the rule's threshold, so each of their events opens or
resolves an incident (about 100 alerts/s); the others stay quiet and are load only.

A real alerter (consumer group, SQL outbox on SQLite, deliverer) posts to a real local HTTP
server (a Slack-like receiver); latency = receive time − the event's ``ts``.
Target: p99 < 250 ms. Peer: the same events' publish → recorder-free XREAD latency
(how fast the stream alone hands events over), printed side by side.

    .venv/bin/python benchmarks/alert_latency.py --seconds 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

from _common import REDIS_URL, REPO, delete_stream_keys, temp_dir, unique_stream

sys.path.insert(0, str(REPO))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--alerting", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    from alerts.engine import Alerter, Deliverer, build_channels
    from alerts.rules import parse_rules
    from pipeline import events as ev
    from pipeline.bus import EventStream
    from pipeline.config import Settings
    from pipeline.consumers.base import ConsumerLoop
    from pipeline.db import migrate
    from pipeline.db.session import make_engine
    from tests.slack_server import SlackLikeServer

    receiver = SlackLikeServer()
    receiver.start()
    stream_name = unique_stream()
    with temp_dir() as home:
        url = f"sqlite:///{home / 'alerts.db'}"
        migrate.upgrade(url)
        engine = make_engine(url)
        settings = Settings(
            redis_url=REDIS_URL, stream=stream_name, home=home, database_url=url, consumer_block_ms=100
        )
        rules = parse_rules(
            {
                "channels": {
                    "hook": {"type": "webhook", "url_env": "BENCH_HOOK", "rate_per_minute": 1_000_000}
                },
                "rules": [
                    {
                        "name": "val-loss-high",
                        "match": {"job": "alerting-*"},
                        "metric": "val_loss",
                        "above": 0.5,
                        "channels": ["hook"],
                    }
                ],
            }
        )
        alerter = Alerter(engine, rules)
        loop = ConsumerLoop(alerter, EventStream(settings=settings), consumer_name="bench-alerter")
        deliverer = Deliverer(engine, build_channels(rules, {"BENCH_HOOK": receiver.url}))
        stream = EventStream(settings=settings)
        stream.ensure_group("alerter")

        # Peer: a plain XREAD follower of the same stream (no SQL, no HTTP).
        peer_latencies: list[float] = []
        stop_peer = threading.Event()

        def follow() -> None:
            last = "$"
            while not stop_peer.is_set():
                reply = stream.client.xread({stream_name: last}, block=100, count=1000)
                now = time.time()
                for _name, entries in reply or []:
                    for message_id, fields in entries:
                        last = message_id
                        event = json.loads(fields[b"event"])
                        if event["type"] == "epoch_end" and event["run_id"].startswith("alerting-"):
                            peer_latencies.append(now - event["ts"])

        threads = [
            threading.Thread(target=loop.run, daemon=True),
            threading.Thread(target=deliverer.run, daemon=True),
            threading.Thread(target=follow, daemon=True),
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        runs = [(f"alerting-{i}" if i < args.alerting else f"quiet-{i}") for i in range(args.runs)]
        stream.publish([ev.build(ev.RunStarted, run_id=r, seq=0, name=r) for r in runs])
        ticks = int(args.seconds / args.interval)
        start = time.monotonic()
        published = 0
        for tick in range(ticks):
            batch = []
            for r in runs:
                value = (0.9 if tick % 2 == 0 else 0.1) if r.startswith("alerting-") else 0.1
                batch.append(
                    ev.build(
                        ev.EpochEnd,
                        run_id=r,
                        seq=tick + 1,
                        epoch=tick,
                        metrics={"loss": 0.1, "val_loss": value},
                    )
                )
            stream.publish(batch)
            published += len(batch)
            time.sleep(max(0.0, start + (tick + 1) * args.interval - time.monotonic()))
        expected = args.alerting * ticks
        deadline = time.monotonic() + 60
        while len(receiver.accepted) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        loop.stop_event.set()
        deliverer.stop_event.set()
        stop_peer.set()
        for thread in threads:
            thread.join(timeout=10)
        engine.dispose()
    delete_stream_keys(REDIS_URL, stream_name)
    receiver.stop()

    print()
    print(
        f"load: {args.runs} runs × 1 epoch_end every {args.interval * 1000:.0f} ms for {args.seconds:g}s = {published:,} events "
        f"({published / args.seconds:,.0f}/s); {args.alerting} runs alternate above/below the threshold"
    )
    print(
        f"alerts received: {len(receiver.accepted):,} of {expected:,} expected (duplicates: {len(receiver.accepted) - len({(r['json']['key']) for r in receiver.accepted})})"
    )
    return_latencies = [
        r["at"] - r["json"]["event_ts"] for r in receiver.accepted if r["json"].get("event_ts")
    ]
    rows = [
        ("alerter: epoch_end → webhook received", return_latencies),
        ("peer: epoch_end → XREAD follower", peer_latencies),
    ]
    print(f"{'path':<40} {'n':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in rows:
        if values:
            print(
                f"{name:<40} {len(values):>7,} {pct(values, 0.5) * 1000:>8.1f} {pct(values, 0.9) * 1000:>8.1f} {pct(values, 0.99) * 1000:>8.1f} {max(values) * 1000:>8.1f}"
            )
    if return_latencies:
        p99 = pct(return_latencies, 0.99) * 1000
        print(
            f"target p99 < 250 ms: {'met' if p99 < 250 else 'NOT met'} ({p99:.1f} ms); "
            f"alerter p50 / stream p50 = {statistics.median(return_latencies) / max(1e-9, statistics.median(peer_latencies)):.1f}x"
        )


if __name__ == "__main__":
    main()
