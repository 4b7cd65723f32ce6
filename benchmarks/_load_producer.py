"""``load_generator.py``'s producer process: many runs' events on a schedule, then a backlog.

Not a benchmark itself. ``produce`` runs in a process of its own (spawn); the main process steers
it through the shared ``phase`` value and reads how many events it has published from ``published``.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time

import _common  # noqa: F401  (puts the repository on sys.path before pipeline is imported)

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.config import Settings


def _metrics(rng: random.Random, count: int, epoch: int) -> dict[str, float]:
    return {f"m{k}": round(rng.random() / (1 + epoch), 6) for k in range(count)}


def produce(
    redis_url: str, stream: str, shards: int, args: dict, published: mp.Value, phase: mp.Value, go: mp.Event
) -> None:
    """The producer process: the steady schedule with bursts, then (on ``phase`` 1) the backlog."""
    settings = Settings(redis_url=redis_url, stream=stream, stream_shards=shards)
    bus = EventStream(settings=settings)
    rng = random.Random(7)
    runs, interval, metrics = args["runs"], args["interval_s"], args["metrics"]
    run_ids = [f"load-{i:06d}" for i in range(runs)]
    seq = [0] * runs
    epoch = [0] * runs
    go.wait()
    start = time.monotonic()
    # run_started for every run, spread over the first interval; then one epoch_end per interval.
    next_at = [start + interval * i / runs for i in range(runs)]
    started = [False] * runs
    order = sorted(range(runs), key=lambda i: next_at[i])
    next_burst = start + args["burst_every_s"]
    cursor = 0

    def epoch_event(i: int) -> ev.Event:
        seq[i] += 1
        event = ev.build(
            ev.EpochEnd,
            run_id=run_ids[i],
            seq=seq[i],
            epoch=epoch[i],
            metrics=_metrics(rng, metrics, epoch[i]),
            learning_rate=1e-3,
            wall_time_s=interval,
        )
        epoch[i] += 1
        return event

    while phase.value == 0:
        now = time.monotonic()
        due: list[ev.Event] = []
        # The schedule is a ring over the runs ordered by phase: take every run whose time has come.
        while next_at[order[cursor]] <= now:
            i = order[cursor]
            if not started[i]:
                started[i] = True
                due.append(
                    ev.build(
                        ev.RunStarted,
                        run_id=run_ids[i],
                        seq=0,
                        name=f"load-{i % 50}",
                        monitor="val_loss",
                        mode="min",
                        epochs=10_000,
                    )
                )
            else:
                due.append(epoch_event(i))
            next_at[i] += interval
            cursor = (cursor + 1) % runs
        if now >= next_burst:
            next_burst += args["burst_every_s"]
            for i in rng.sample(range(runs), int(runs * args["burst_fraction"])):
                if started[i]:
                    due.extend(epoch_event(i) for _ in range(args["burst_events"]))
        for chunk in range(0, len(due), 2000):
            bus.publish(due[chunk : chunk + 2000])
        with published.get_lock():
            published.value += len(due)
        time.sleep(max(0.0, 0.05 - (time.monotonic() - now)))
    # Capacity: the backlog, built (encoded) first; once the main process saw the steady load
    # drained (phase 3), published as fast as Redis takes it.
    active = [i for i in range(runs) if started[i]]
    backlog = [ev.encode(epoch_event(active[n % len(active)])) for n in range(args["backlog"])]
    phase.value = 2
    while phase.value != 3:
        time.sleep(0.01)
    for chunk in range(0, len(backlog), 2000):
        bus.publish(backlog[chunk : chunk + 2000])
        with published.get_lock():
            published.value += len(backlog[chunk : chunk + 2000])
    phase.value = 4
