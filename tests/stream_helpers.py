"""Synthetic event streams for consumer tests (the events are real schema events)."""

from __future__ import annotations

from pipeline import events as ev
from pipeline.bus import EventStream


def epoch_events(run_count: int, epochs: int, metrics: int = 4) -> list[ev.Event]:
    out: list[ev.Event] = []
    for r in range(run_count):
        run_id = f"run{r:05d}"
        out.append(
            ev.build(
                ev.RunStarted, run_id=run_id, seq=0, name=f"synthetic-{r % 3}", monitor="val_loss", mode="min"
            )
        )
        for epoch in range(epochs):
            out.append(
                ev.build(
                    ev.EpochEnd,
                    run_id=run_id,
                    seq=epoch + 1,
                    epoch=epoch,
                    metrics={f"m{k}": float(epoch * 10 + k) for k in range(metrics)},
                    learning_rate=1e-3,
                    wall_time_s=0.1,
                )
            )
        out.append(
            ev.build(
                ev.RunFinished, run_id=run_id, seq=epochs + 1, status="completed", epochs_completed=epochs
            )
        )
    return out


def publish_all(stream: EventStream, items: list, chunk: int = 1000) -> None:
    for start in range(0, len(items), chunk):
        stream.publish(items[start : start + chunk])


#: Every event the recorder has recorded, by id: lifecycle events in ``events``, epoch_end events as
#: their ``epochs`` row (``epochs.event_id``). A batch_end is recorded as batch_metrics rows only.
RECORDED_EVENT_IDS = (
    "SELECT event_id FROM events UNION ALL SELECT event_id FROM epochs WHERE event_id IS NOT NULL"
)
RECORDED_EVENT_COUNT = (
    "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM epochs WHERE event_id IS NOT NULL)"
)
