"""``vs_mlflow.py``'s fit overhead: one model fitted with no tracking, Fitstream's and MLflow's.

Not a benchmark itself. ``fit_overhead`` fits the workload in every mode of ``FIT_MODES``,
alternating in rotating order each round, and returns each mode's median epoch, its paired overhead
against the same round's baseline and the time spent inside the tool's Keras hooks.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import _common
import _workloads
from _recorder_process import bench_env, start_recorder, stop

FIT_MODES = ("baseline", "fitstream epoch", "mlflow epoch", "fitstream batch", "mlflow batch")


def one_fit(
    mode: str, workload: _workloads.Workload, epochs: int, settings: Any, mlflow_uri: str, experiment_id: str
) -> dict[str, Any]:
    import keras
    import mlflow

    from pipeline import EventPublisher

    (x, y), (x_val, y_val) = workload.data
    batch_size = workload.batch_size
    keras.backend.clear_session()
    gc.collect()
    model = workload.build_model()
    stamps: list[float] = []

    class EpochClock(keras.callbacks.Callback):  # no batch hooks
        def on_epoch_begin(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            stamps.append(time.perf_counter())

        def on_train_end(self, logs=None):  # type: ignore[no-untyped-def]
            stamps.append(time.perf_counter())

    spent: dict[str, float] = {}
    callbacks: list[Any] = [EpochClock()]
    run = None
    if mode.startswith("fitstream"):
        tracker = EventPublisher(
            name="bench",
            settings=settings,
            batch_size=batch_size,
            batch_events_every=1 if mode.endswith("batch") else None,
        )
        _common.time_hooks(tracker, spent)
        callbacks.append(tracker)
    elif mode.startswith("mlflow"):
        mlflow.set_tracking_uri(mlflow_uri)
        run = mlflow.start_run(experiment_id=experiment_id)
        every_step = mode.endswith("batch")
        tracker = mlflow.keras.MlflowCallback(
            log_every_epoch=not every_step, log_every_n_steps=1 if every_step else None
        )
        _common.time_hooks(tracker, spent)
        callbacks.append(tracker)
    t0 = time.perf_counter()
    try:
        model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=batch_size,
            verbose=0,
            callbacks=callbacks,
        )
    finally:
        if run is not None:
            mlflow.end_run()
    wall = time.perf_counter() - t0
    intervals = [b - a for a, b in zip(stamps, stamps[1:])][1:]  # epoch 0 traces the graph
    return {
        "mode": mode,
        "epoch_s": _common.median(intervals),
        "fit_s": wall,
        "hooks_per_epoch_s": sum(spent.values()) / epochs,
        "hooks": spent,
    }


def fit_overhead(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import mlflow

    from pipeline.config import Settings

    workload = _workloads.get(args.workload)
    print(
        f"  fit: {workload.description}, batch {workload.batch_size}; {_workloads.accelerator_line()}",
        file=sys.stderr,
    )
    stream = _common.unique_stream()
    database = f"sqlite:///{scratch / 'fit-history.db'}"
    from pipeline.db.migrate import upgrade

    upgrade(database)
    settings = Settings(
        redis_url=_common.REDIS_URL, database_url=database, stream=stream, home=scratch / "home"
    )
    mlflow_uri = f"sqlite:///{scratch / 'mlflow.db'}"
    # MlflowCallback logs the model summary as an artifact: keep it in the scratch folder, not ./mlruns.
    mlflow.set_tracking_uri(mlflow_uri)
    experiment_id = mlflow.create_experiment(
        "fit-overhead", artifact_location=(scratch / "mlartifacts").as_uri()
    )
    recorder = start_recorder(bench_env(database, stream, scratch / "home"), scratch / "fit-recorder.log")
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for mode in FIT_MODES:  # warm-up: graph tracing, MLflow's schema, Redis connections
            one_fit(mode, workload, 2, settings, mlflow_uri, experiment_id)
        for r in range(args.rounds):
            order = FIT_MODES[r % len(FIT_MODES) :] + FIT_MODES[: r % len(FIT_MODES)]
            rounds.append(
                {
                    mode: one_fit(mode, workload, args.epochs, settings, mlflow_uri, experiment_id)
                    for mode in order
                }
            )
            print(f"  fit round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        stop(recorder)
        _common.delete_stream_keys(_common.REDIS_URL, stream)
    summary = {}
    for mode in FIT_MODES:
        epoch = _common.median([rnd[mode]["epoch_s"] for rnd in rounds])
        paired = _common.median([rnd[mode]["epoch_s"] / rnd["baseline"]["epoch_s"] - 1 for rnd in rounds])
        hooks = _common.median([rnd[mode]["hooks_per_epoch_s"] for rnd in rounds])
        base = _common.median([rnd["baseline"]["epoch_s"] for rnd in rounds])
        summary[mode] = {
            "epoch_ms": epoch * 1000,
            "overhead_pct": paired * 100,
            "hooks_ms_per_epoch": hooks * 1000,
            "hooks_pct_of_baseline_epoch": hooks / base * 100,
        }
    return {
        "rounds": args.rounds,
        "epochs": args.epochs,
        "batches_per_epoch": workload.steps_per_epoch,
        "workload": workload.description,
        "batch_size": workload.batch_size,
        "accelerator": _workloads.accelerator_line(),
        "modes": summary,
    }
