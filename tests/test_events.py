"""Unit tests of the event schema (pure: no services)."""

from __future__ import annotations

import json
import math

import pytest

from pipeline import events as ev
from pipeline.errors import InvalidEventError


def test_round_trip_keeps_every_field_and_nan():
    event = ev.build(
        ev.EpochEnd,
        run_id="r1",
        seq=4,
        epoch=2,
        metrics={"loss": float("nan"), "acc": 0.75},
        learning_rate=1e-3,
    )
    decoded = ev.decode({k.encode(): v.encode() for k, v in ev.encode(event).items()})
    assert decoded.id == event.id and decoded.seq == 4 and decoded.epoch == 2
    assert math.isnan(decoded.metrics["loss"]) and decoded.metrics["acc"] == 0.75


def test_every_event_type_round_trips():
    samples = [
        ev.build(ev.RunQueued, run_id="r", seq=0, name="n", queue="gpu", spec={"epochs": 3}),
        ev.build(
            ev.RunStarted,
            run_id="r",
            seq=0,
            name="n",
            callbacks=[ev.MonitoringCallback(kind="early_stopping", monitor="val_loss", mode="auto")],
        ),
        ev.build(ev.EpochEnd, run_id="r", seq=1, epoch=0, metrics={}),
        ev.build(ev.BatchEnd, run_id="r", seq=2, epoch=0, batch=3, metrics={"loss": 1.0}),
        ev.build(ev.CheckpointSaved, run_id="r", seq=3, path="/x.keras", epoch=0, sha256="ab"),
        ev.build(ev.LearningRateChanged, run_id="r", seq=4, epoch=0, old=0.1, new=0.05),
        ev.build(
            ev.EarlyStopped,
            run_id="r",
            seq=5,
            stopped_epoch=4,
            best_epoch=1,
            best_value=0.3,
            monitor="val_loss",
            mode="min",
        ),
        ev.build(ev.RunFailed, run_id="r", seq=6, error_type="ValueError", message="boom"),
        ev.build(ev.RunFinished, run_id="r", seq=7, status="early_stopped", epochs_completed=5),
        ev.build(
            ev.ModelPromoted, run_id="r", seq=8, name="digits", version=3, aliases=["champion"], champion=True
        ),
        ev.build(ev.PromotionSkipped, run_id="r", seq=9, reason="checkpoint missing"),
    ]
    assert {s.type for s in samples} == set(ev.EVENT_TYPES)
    for sample in samples:
        assert ev.decode(ev.encode(sample)) == sample


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"x": "1"}, "no 'event' field"),
        ({"event": "{"}, "not valid JSON"),
        ({"event": "3"}, "must be a JSON object"),
        ({"event": json.dumps({"v": 2, "type": "epoch_end"})}, "unknown schema version 2"),
        ({"event": json.dumps({"type": "epoch_end"})}, "unknown schema version None"),
        ({"event": json.dumps({"v": 1, "type": "nope"})}, "unknown event type 'nope'"),
        (
            {
                "event": json.dumps(
                    {
                        "v": 1,
                        "type": "epoch_end",
                        "id": "a",
                        "run_id": "r",
                        "seq": -1,
                        "ts": 0,
                        "epoch": 0,
                        "metrics": {},
                    }
                )
            },
            "seq: Input should be greater than or equal to 0",
        ),
        (
            {
                "event": json.dumps(
                    {
                        "v": 1,
                        "type": "run_finished",
                        "id": "a",
                        "run_id": "r",
                        "seq": 1,
                        "ts": 0,
                        "status": "exploded",
                        "epochs_completed": 1,
                    }
                )
            },
            "status",
        ),
        (
            {
                "event": json.dumps(
                    {
                        "v": 1,
                        "type": "epoch_end",
                        "id": "a",
                        "run_id": "r",
                        "seq": 1,
                        "ts": 0,
                        "epoch": 0,
                        "metrics": {},
                        "surprise": 1,
                    }
                )
            },
            "surprise: Extra inputs are not permitted",
        ),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(fields, reason):
    with pytest.raises(InvalidEventError, match=None) as info:
        ev.decode(fields)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_log_values_become_plain_floats():
    import numpy as np

    assert ev.to_float(np.float32(0.5)) == 0.5 and type(ev.to_float(np.float32(0.5))) is float
    assert ev.to_float("text") is None
