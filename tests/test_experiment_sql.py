"""Experiments in SQL on both databases (issue 12): the recorder writes ``params``, ``sweeps`` and
``runs.sweep_id`` / ``status_reason`` idempotently; ``run_summary`` carries the params as one JSON
object; sweep states move with their trials; the read side ranks and compares; a real fit records
its own ``EventPublisher(params=…)`` and the optimizer's Keras config. Sweep expansion and the
parameter bounds are checked as plain functions."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa

from pipeline import events as ev
from pipeline.consumers.base import Received
from pipeline.consumers.recorder import write_batch
from pipeline.db.experiments import compare_runs, list_sweeps, sweep_trials
from pipeline.db.session import make_engine, transaction
from pipeline.errors import RunNotFoundError
from pipeline.jobs import JobSpecError
from pipeline.params import MAX_PARAMS, ParamsError, flatten_params, param_row, spec_params
from pipeline.sweeps import MAX_TRIALS, SWEEP_CANCELLED_REASON, apply, parse_sweep_text

SWEEP_SECTION = {"grid": {"model.kwargs.hidden": [8, 32]}, "max_parallel": 1, "prune": None}


def received(event: ev._Event) -> Received:
    fields = ev.encode(event)
    return Received(message_id=f"{event.seq}-0", event=event, payload=fields[ev.PAYLOAD_FIELD])


def record(engine, *events) -> None:
    with transaction(engine) as conn:
        write_batch(conn, [received(e) for e in events])


def queued(run_id: str, sweep_id: str, trial: int, hidden: int, *, trials: int = 2) -> ev.RunQueued:
    spec = {
        "name": "grid",
        "model": {"fn": "examples.digits:build_model", "kwargs": {"hidden": hidden}},
        "fit": {"epochs": 3, "batch_size": 32, "shuffle": True},
        "reduce_lr": None,
        "tags": {"team": "x"},
    }
    return ev.build(
        ev.RunQueued,
        run_id=run_id,
        seq=ev.QUEUED_SEQ,
        name="grid",
        queue="gpu",
        spec=spec,
        params=spec_params(spec),
        sweep=ev.SweepTrial(id=sweep_id, name="grid", trial=trial, trials=trials, spec=SWEEP_SECTION),
    )


def finished(
    run_id: str,
    status: str,
    best: float | None,
    *,
    epochs: int = 3,
    reason: str | None = None,
    seq: int = 1_000_010,
):
    return ev.build(
        ev.RunFinished,
        run_id=run_id,
        seq=seq,
        status=status,
        epochs_completed=epochs,
        best_value=best,
        best_epoch=1 if best is not None else None,
        monitor="val_loss",
        mode="min",
        reason=reason,
    )


def started(run_id: str) -> ev.RunStarted:
    return ev.build(
        ev.RunStarted,
        run_id=run_id,
        seq=1_000_000,
        name="grid",
        epochs=3,
        monitor="val_loss",
        mode="min",
        params={"optimizer.learning_rate": 0.001, "optimizer.class_name": "Adam", "fit.batch_size": 999},
    )


def epoch(run_id: str, number: int, val_loss: float, val_accuracy: float) -> ev.EpochEnd:
    return ev.build(
        ev.EpochEnd,
        run_id=run_id,
        seq=1_000_001 + number,
        epoch=number,
        metrics={"val_loss": val_loss, "val_accuracy": val_accuracy},
    )


def state(engine, sweep_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT state FROM sweeps WHERE id = :s"), {"s": sweep_id}).scalar_one()


def test_params_sweeps_and_run_summary_are_recorded_idempotently(engine, database_url):
    sweep_id, a, b = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    record(engine, queued(a, sweep_id, 0, 8), queued(b, sweep_id, 1, 32))
    assert state(engine, sweep_id) == "queued"
    record(engine, started(a), epoch(a, 0, 0.9, 0.5), epoch(a, 1, 0.5, 0.8), epoch(a, 2, 0.6, 0.85))
    assert state(engine, sweep_id) == "running"
    # Redelivered, in another batch and in another order: nothing changes.
    record(engine, epoch(a, 1, 0.5, 0.8), queued(a, sweep_id, 0, 8), started(a))
    record(engine, finished(a, "completed", 0.5))
    assert state(engine, sweep_id) == "running"
    record(
        engine,
        started(b),
        finished(
            b, "pruned", None, epochs=1, reason="pruned: val_loss 2.3 at epoch 0 is worse than the median"
        ),
    )
    assert state(engine, sweep_id) == "finished"

    with engine.connect() as conn:
        params = {
            (r.run_id, r.key): (r.value, r.value_num) for r in conn.execute(sa.text("SELECT * FROM params"))
        }
        summary = {r.run_id: r for r in conn.execute(sa.text("SELECT * FROM run_summary"))}
        sweep = conn.execute(sa.text("SELECT * FROM sweeps")).one()
    assert params[(a, "model.kwargs.hidden")] == ("8", 8.0) and params[(b, "model.kwargs.hidden")] == (
        "32",
        32.0,
    )
    assert params[(a, "model.fn")] == ("examples.digits:build_model", None)
    assert params[(a, "fit.shuffle")] == ("true", None) and params[(a, "reduce_lr")] == ("null", None)
    assert params[(a, "optimizer.learning_rate")] == ("0.001", 0.001) and params[
        (a, "optimizer.class_name")
    ] == ("Adam", None)
    assert params[(a, "fit.batch_size")] == (
        "32",
        32.0,
    )  # the spec's value stays: the first one recorded wins
    assert (a, "tags.team") not in params and (a, "name") not in params  # labels, not parameters
    assert len([k for k in params if k[0] == a]) == len({k for k in params if k[0] == a})
    assert (sweep.name, sweep.trials, json.loads(sweep.spec)) == ("grid", 2, SWEEP_SECTION)
    assert summary[a].status == "completed" and summary[a].epochs == 3 and summary[a].sweep_id == sweep_id
    assert summary[b].status == "pruned" and summary[b].status_reason.startswith("pruned: val_loss 2.3")
    as_json = summary[a].params if isinstance(summary[a].params, dict) else json.loads(summary[a].params)
    assert as_json["model.kwargs.hidden"] == 8 and as_json["optimizer.learning_rate"] == 0.001
    assert as_json["model.fn"] == "examples.digits:build_model"

    # The read side: trials best first (val_loss: smallest), the one without a value last.
    reader = make_engine(database_url, read_only=True)
    try:
        view = sweep_trials(reader, sweep_id[:8])
        assert [(t.run_id, t.best) for t in view.trials] == [(a, True), (b, False)]
        assert view.varied == ["model.kwargs.hidden"] and view.mode == "min"
        by_accuracy = sweep_trials(reader, sweep_id, metric="val_accuracy")
        assert (
            by_accuracy.trials[0].best_value,
            by_accuracy.trials[0].best_epoch,
            by_accuracy.trials[0].mode,
        ) == (0.85, 2, "max")
        runs, differing = compare_runs(reader, [a, b])
        assert differing == ["model.kwargs.hidden"], differing
        assert [r.params["model.kwargs.hidden"] for r in runs] == [8, 32]
        assert compare_runs(reader, [sweep_id])[1] == ["model.kwargs.hidden"]
        listed = list_sweeps(reader)
        assert [(s["sweep_id"], s["ended"], s["best_run_id"]) for s in listed] == [(sweep_id, 2, a)]
        with pytest.raises(RunNotFoundError, match="no run with id"):
            compare_runs(reader, ["no-such-run"])
        with pytest.raises(RunNotFoundError, match="no sweep with id"):
            sweep_trials(reader, "no-such-sweep")
    finally:
        reader.dispose()


def test_a_cancelled_sweep_says_so_once_every_trial_ended(engine):
    sweep_id, a, b = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    record(engine, queued(a, sweep_id, 0, 8), queued(b, sweep_id, 1, 32), started(a))
    record(
        engine,
        ev.build(
            ev.RunFinished,
            run_id=b,
            seq=ev.CANCELLED_BEFORE_START_SEQ,
            status="cancelled",
            epochs_completed=0,
            reason=SWEEP_CANCELLED_REASON,
        ),
    )
    assert state(engine, sweep_id) == "running"  # a still trains
    record(engine, finished(a, "cancelled", 0.7, reason=SWEEP_CANCELLED_REASON))
    assert state(engine, sweep_id) == "cancelled"


def test_a_real_fit_records_its_own_params_and_the_optimizers(settings, engine, recorder, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip(
            "the publisher's params do not depend on the database; their SQL is checked on both above"
        )
    import keras

    from pipeline import EventPublisher
    from tests.training_helpers import small_digits, small_model

    (x, y), (x_val, y_val) = small_digits(200)
    model = small_model(learning_rate=0.02)
    publisher = EventPublisher(
        name="own-script",
        settings=settings,
        batch_size=50,
        params={"hidden": 16, "data": {"augment": True, "crop": [24, 24]}, "note": "first try"},
    )
    model.fit(x, y, validation_data=(x_val, y_val), epochs=2, batch_size=50, verbose=0, callbacks=[publisher])
    from tests.conftest import wait_for

    def recorded() -> dict:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT key, value, value_num FROM params WHERE run_id = :r"), {"r": publisher.run_id}
            ).all()
        return {k: (v, n) for k, v, n in rows}

    params = wait_for(lambda: recorded() or None, message="the run's params recorded")
    assert params["hidden"] == ("16", 16.0) and params["data.augment"] == ("true", None)
    assert params["data.crop"] == ("[24, 24]", None) and params["note"] == ("first try", None)
    assert params["fit.epochs"] == ("2", 2.0) and params["fit.batch_size"] == ("50", 50.0)
    assert params["optimizer.class_name"] == (type(model.optimizer).__name__, None)
    assert params["optimizer.learning_rate"][1] == pytest.approx(0.02)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(
        params["optimizer.learning_rate"][1]
    )


def test_parameter_bounds_are_checked_when_the_publisher_is_made():
    from pipeline import EventPublisher

    with pytest.raises(ParamsError, match=f"at most {MAX_PARAMS:,}"):
        EventPublisher(name="x", params={f"p{i}": i for i in range(MAX_PARAMS + 1)})
    with pytest.raises(ParamsError, match="'note' is 2,001 characters long; at most 2,000"):
        EventPublisher(name="x", params={"note": "n" * 2001})
    with pytest.raises(ParamsError, match="parameter 'when': must be text, a number"):
        EventPublisher(name="x", params={"when": object()})
    assert flatten_params({"a": {"b": {"c": 1}}, "d": []}) == {"a.b.c": 1, "d": "[]"}
    assert param_row("x", float("nan")) == ("x", "NaN", None) and param_row("x", True) == ("x", "true", None)
    assert param_row("x", 3) == ("x", "3", 3.0)


SWEEP = "name: s\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\n"


def test_sweep_expansion_grid_random_and_their_errors():
    grid = parse_sweep_text(
        SWEEP + "sweep:\n  grid: {model.kwargs.hidden: [8, 16], fit.batch_size: [32, 64, 128]}\n"
    )
    assert [t.assignment for t in grid.trials][:4] == [
        {"model.kwargs.hidden": 8, "fit.batch_size": 32},
        {"model.kwargs.hidden": 8, "fit.batch_size": 64},
        {"model.kwargs.hidden": 8, "fit.batch_size": 128},
        {"model.kwargs.hidden": 16, "fit.batch_size": 32},
    ]
    assert [(t.spec.model.kwargs["hidden"], t.spec.fit.batch_size) for t in grid.trials][-1] == (16, 128)
    text = SWEEP + (
        "sweep:\n  grid: {model.kwargs.hidden: [8, 16]}\n  random:\n    trials: 5\n    seed: 3\n"
        "    model.kwargs.learning_rate: {loguniform: [0.0001, 0.1]}\n    fit.epochs: {int: [1, 3]}\n"
        "    early_stopping.patience: {choice: [1, 5]}\n    early_stopping.min_delta: {uniform: [0.0, 0.5]}\n"
    )
    drawn = parse_sweep_text(text)
    again = parse_sweep_text(text)
    assert [t.assignment for t in drawn.trials] == [t.assignment for t in again.trials]  # the seed decides
    assert len(drawn.trials) == 10
    for trial in drawn.trials:
        assert 0.0001 <= trial.spec.model.kwargs["learning_rate"] <= 0.1
        assert trial.spec.fit.epochs in (1, 2, 3) and trial.spec.early_stopping.patience in (1, 5)
        assert 0.0 <= trial.spec.early_stopping.min_delta <= 0.5
    assert {t.spec.fit.epochs for t in drawn.trials} == {1, 2, 3}  # both ends of int: are drawn
    assert len({t.assignment["model.kwargs.learning_rate"] for t in drawn.trials}) == 10

    bad = {
        "grid: {fit.batch_size: []}": "fit.batch_size: needs at least one value",
        "grid: {fit.batch_size: [1]}\n  random: {trials: 2, fit.batch_size: {int: [1, 3]}}": "in both grid and random",
        "random: {trials: 2, model.kwargs.lr: {loguniform: [0, 1]}}": "loguniform: both ends must be above 0",
        "random: {trials: 0, model.kwargs.lr: {uniform: [0, 1]}}": "trials must be a whole number, 1 or more",
        "random: {trials: 2, model.kwargs.lr: {uniform: [1, 0]}}": "low must not be above high",
        "random: {trials: 2, model.kwargs.lr: {normal: [0, 1]}}": "give exactly one of uniform",
        "grid: {sweep.max_parallel: [1]}": "is not a spec path",
        "grid: {queue: [gpu, cpu]}": "'queue' cannot vary within a sweep",
        "max_parallel: 2": "a sweep needs grid: and/or random: parameters",
        "grid: {fit.epochs: [1]}\n  max_parallel: 0": "max_parallel",
        "grid: {a.b: [1]}\n  prune: {kind: mean}": "prune",
        "grid: {fit.epochs: [0, 2]}": "trial 1 of 2 (fit.epochs=0): fit.epochs: Input should be greater than or equal to 1",
        "grid: {model.kwargs.hidden: [8]}\n  grid2: 1": "grid2",
    }
    for section, message in bad.items():
        with pytest.raises(JobSpecError, match=None) as raised:
            parse_sweep_text(SWEEP + "sweep:\n  " + section + "\n")
        assert message in str(raised.value), (section, str(raised.value))
    big = "sweep:\n  grid: {" + ", ".join(f"model.kwargs.k{i}: [1, 2]" for i in range(11)) + "}\n"
    with pytest.raises(JobSpecError, match=f"makes 2,048 trials; at most {MAX_TRIALS:,}"):
        parse_sweep_text(SWEEP + big)


def test_a_spec_path_is_set_whatever_shape_the_job_file_gave_its_section():
    base = {"name": "s", "model": "examples.digits:build_model", "early_stopping": True, "checkpoint": False}
    assert apply(base, "model.kwargs.hidden", 8)["model"] == {
        "fn": "examples.digits:build_model",
        "kwargs": {"hidden": 8},
    }
    assert apply(base, "early_stopping.patience", 2)["early_stopping"] == {"patience": 2}
    assert apply(base, "reduce_lr.factor", 0.5)["reduce_lr"] == {"factor": 0.5}
    assert base["model"] == "examples.digits:build_model"  # the base is not changed
    with pytest.raises(
        ValueError, match="cannot set checkpoint.monitor: checkpoint is False in the job file, not a section"
    ):
        apply(base, "checkpoint.monitor", "val_accuracy")


def test_two_recorders_ending_the_last_two_trials_at_once_finish_the_sweep(engine, database_url):
    """Review finding: on PostgreSQL a second recorder's sweep-state UPDATE, blocked by the first's,
    counted trials from before the first committed, and the sweep stayed `running` for ever."""
    import threading

    sweep_id, a, b = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    record(engine, queued(a, sweep_id, 0, 8), queued(b, sweep_id, 1, 32), started(a), started(b))
    first = engine.connect()
    first_tx = first.begin()
    write_batch(first, [received(finished(a, "completed", 0.5))])  # holds its locks, not committed yet
    second_done = threading.Event()

    def second() -> None:
        with transaction(engine) as conn:
            write_batch(conn, [received(finished(b, "completed", 0.4))])
        second_done.set()

    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    if database_url.startswith("postgresql"):
        assert not second_done.wait(1.0), "the second recorder should wait for the first's sweep row"
    first_tx.commit()
    first.close()
    thread.join(timeout=30)
    assert second_done.is_set()
    assert state(engine, sweep_id) == "finished"


def test_numbers_past_a_float_and_long_spec_values_are_kept_not_refused():
    assert param_row("seed", 10**400) == ("seed", str(10**400), None)
    params = spec_params({"name": "x", "model": {"fn": "m:f", "kwargs": {"classes": list(range(1000))}}})
    assert (
        params["model.kwargs.classes"].endswith("… (4,890 characters)")
        and len(params["model.kwargs.classes"]) <= 2000
    )
    with pytest.raises(ParamsError, match="'a.b' is given twice"):
        flatten_params({"a.b": 1, "a": {"b": 2}})
    import numpy as np

    assert flatten_params({"w": np.array([1, 2]), "lr": np.float32(0.5), "bad": np.float64("nan")}) == {
        "w": "[1, 2]",
        "lr": 0.5,
        "bad": "NaN",
    }


def test_grids_are_counted_before_they_are_made_and_hold_finite_numbers_only():
    huge = (
        "sweep:\n  grid: {"
        + ", ".join(f"model.kwargs.k{i}: [{', '.join(map(str, range(30)))}]" for i in range(8))
        + "}\n"
    )
    with pytest.raises(JobSpecError, match="makes 656,100,000,000 trials; at most 1,000"):
        parse_sweep_text(SWEEP + huge)  # eight keys of thirty values: refused without making one trial
    with pytest.raises(JobSpecError, match="makes 3,000,000 trials"):
        parse_sweep_text(SWEEP + "sweep:\n  random: {trials: 3000000, model.kwargs.x: {uniform: [0, 1]}}\n")
    with pytest.raises(JobSpecError, match="nan is not a finite number"):
        parse_sweep_text(SWEEP + "sweep:\n  grid: {model.kwargs.dropout: [0.1, .nan]}\n")
    with pytest.raises(JobSpecError, match="both ends must be finite numbers"):
        parse_sweep_text(SWEEP + "sweep:\n  random: {trials: 2, model.kwargs.x: {uniform: [-.inf, .inf]}}\n")
