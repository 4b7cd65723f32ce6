"""``recorder_throughput.py``'s producer: a separate process that publishes the encoded events.

Not a benchmark itself. ``start_producer`` spawns ``producer_main``, which encodes the events
(``make_events``: the same deterministic data for every peer and trial), signals that it is ready
and, once told to go, publishes them in pipelined batches, reporting its first ``XADD`` and its end.
"""

from __future__ import annotations

import random
import time

import _common


def make_events(n_events: int, n_runs: int, n_metrics: int, seed: int) -> list[dict[str, str]]:
    """Deterministic encoded epoch_end events (same data for every peer and trial)."""
    from pipeline import events as ev

    rng = random.Random(seed)
    run_ids = [f"bench{seed:04d}{rng.getrandbits(64):016x}" for _ in range(n_runs)]
    names = ["loss", "accuracy", "val_loss", "val_accuracy"] + [f"metric_{i}" for i in range(4, n_metrics)]
    names = names[:n_metrics]
    base_ts = 1_700_000_000.0
    out: list[dict[str, str]] = []
    epoch = 0
    while len(out) < n_events:
        for r, run_id in enumerate(run_ids):
            if len(out) >= n_events:
                break
            event = ev.EpochEnd(
                id=f"{seed:04d}{len(out):012d}{r:06d}",
                run_id=run_id,
                seq=epoch + 1,
                ts=base_ts + epoch * 10 + r * 0.001,
                epoch=epoch,
                metrics={name: rng.random() for name in names},
                learning_rate=1e-3,
                wall_time_s=0.2,
                steps=45,
                samples_per_second=7000.0,
                steps_per_second=220.0,
            )
            out.append(ev.encode(event))
        epoch += 1
    return out


def producer_main(
    redis_url: str,
    stream: str,
    n_events: int,
    n_runs: int,
    n_metrics: int,
    seed: int,
    publish_batch: int,
    ready,
    go,
    results,
) -> None:  # type: ignore[no-untyped-def]
    from pipeline.bus import EventStream
    from pipeline.config import Settings

    payloads = make_events(n_events, n_runs, n_metrics, seed)
    bus = EventStream(settings=Settings(redis_url=redis_url, stream=stream))
    bus.client.ping()
    ready.set()
    go.wait()
    t_first = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes on Linux
    for i in range(0, len(payloads), publish_batch):
        bus.publish(payloads[i : i + publish_batch])
    results.put((t_first, time.perf_counter()))


def start_producer(ctx, stream: str, args, seed: int):  # type: ignore[no-untyped-def]
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(
        target=producer_main,
        args=(
            _common.REDIS_URL,
            stream,
            args.events,
            args.runs,
            args.metrics,
            seed,
            args.publish_batch,
            ready,
            go,
            results,
        ),
        daemon=True,
    )
    proc.start()
    if not ready.wait(timeout=300):
        proc.kill()
        raise RuntimeError("producer did not get ready")
    return proc, go, results
