"""How much does ``EventPublisher`` slow down ``model.fit``?

What is measured
----------------
The digits MLP of ``examples/digits.py`` (``build_model()``: hidden=64, Adam,
sparse categorical cross-entropy + accuracy) is fitted on ``load_data()``
(1,437 training / 360 validation samples) with ``batch_size=32`` (45 batches
per epoch), ``validation_data`` given, ``verbose=0``, in one process, in
three modes:

* ``baseline``     -- no publisher;
* ``per-epoch``    -- ``EventPublisher`` with its defaults (run_started, one
  epoch_end per epoch, run_finished);
* ``every-batch``  -- ``EventPublisher(batch_events_every=1)``: also one
  batch_end event per training batch.

The publisher sends to a real Redis (a unique stream ``fitstream:bench:<hex>``
deleted at the end). Every fit uses a freshly built, identically seeded model
(``keras.backend.clear_session()`` + ``build_model(seed=0)``, outside the
timed region). One warm-up fit per mode is run first and discarded; then the
modes are repeated ``--repeats`` times in rotating order (ABC, BCA, CAB, ...)
so that slow drift of the machine (thermal, other tenants) cancels out.

Figures, per mode:

* **median epoch** -- a small timing callback (listed first, it has no batch
  hooks so it does not change how Keras dispatches batch callbacks) records
  ``time.perf_counter()`` in ``on_epoch_begin``, ``on_epoch_end`` and
  ``on_train_end``. An epoch's time is the interval from its
  ``on_epoch_begin`` to the next epoch's ``on_epoch_begin`` (the last epoch:
  to ``on_train_end``), so it includes every callback's work for that epoch,
  including the publisher's, which publishes an epoch at the start of the
  next one. Epoch 0 of each fit (graph tracing) is excluded; the median is
  over all remaining epochs of all repeats. ``epoch body`` (begin -> end of
  the same epoch) is shown too.
* **median fit** -- wall time of the whole ``model.fit`` call, which also
  includes ``on_train_begin`` (publisher: starting its sender thread,
  connecting) and ``on_train_end`` (publisher: flushing to Redis, joining the
  thread).
* **CPU/fit** -- process CPU time (all threads) of the fit: the publisher's
  background sender thread competes with TensorFlow for the cores.
* **overhead %** -- ``mode / baseline - 1`` for each figure; ``spread %`` is
  (max - min) / median of the per-fit median epoch times across repeats, a
  rough noise level to read the overheads against.
* **events/fit** -- ``publisher.last_report.sent`` (events that reached Redis).

Targets: per-epoch mode <= 1 % per-epoch overhead; every-batch mode <= 5 %.

Run::

    .venv/bin/python benchmarks/publisher_overhead.py [--repeats 5] [--epochs 10]

No timing is asserted; the script prints the figures and whether each target
was met on this run.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)

MODES = ("baseline", "per-epoch", "every-batch")
TARGETS = {"baseline": None, "per-epoch": 1.0, "every-batch": 5.0}
BATCH_SIZE = 32


@dataclass
class FitResult:
    epoch_intervals: list[float]  # begin -> next begin (s), epoch 0 included
    epoch_bodies: list[float]  # begin -> end (s)
    fit_s: float
    cpu_s: float
    events_sent: int | None


@dataclass
class ModeResults:
    fits: list[FitResult] = field(default_factory=list)

    def intervals(self) -> list[float]:
        return [t for f in self.fits for t in f.epoch_intervals[1:]]

    def bodies(self) -> list[float]:
        return [t for f in self.fits for t in f.epoch_bodies[1:]]

    def per_fit_medians(self) -> list[float]:
        return [_common.median(f.epoch_intervals[1:]) for f in self.fits]


def make_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Records perf_counter stamps; deliberately has no batch hooks."""

        def __init__(self) -> None:
            super().__init__()
            self.begins: list[float] = []
            self.ends: list[float] = []
            self.train_end = 0.0

        def on_epoch_begin(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            self.begins.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            self.ends.append(time.perf_counter())

        def on_train_end(self, logs=None):  # type: ignore[no-untyped-def]
            self.train_end = time.perf_counter()

        def intervals(self) -> list[float]:
            stamps = self.begins + [self.train_end]
            return [b - a for a, b in zip(stamps, stamps[1:])]

        def bodies(self) -> list[float]:
            return [e - b for b, e in zip(self.begins, self.ends)]

    return EpochTimer()


def one_fit(mode: str, data, epochs: int, settings) -> FitResult:  # type: ignore[no-untyped-def]
    import keras

    from examples import digits
    from pipeline.callbacks.publisher import EventPublisher

    (x, y), (x_val, y_val) = data
    keras.backend.clear_session()
    gc.collect()
    model = digits.build_model()  # seeded: identical weights and shuffling in every fit
    timer = make_timer()
    callbacks: list[keras.callbacks.Callback] = [timer]
    publisher = None
    if mode != "baseline":
        publisher = EventPublisher(
            name=f"bench-{mode}",
            batch_events_every=1 if mode == "every-batch" else None,
            batch_size=BATCH_SIZE,
            settings=settings,
        )
        callbacks.append(publisher)
    cpu0, t0 = time.process_time(), time.perf_counter()
    model.fit(
        x, y, validation_data=(x_val, y_val), epochs=epochs, batch_size=BATCH_SIZE,
        verbose=0, callbacks=callbacks,
    )
    t1, cpu1 = time.perf_counter(), time.process_time()
    sent = None
    if publisher is not None:
        report = publisher.last_report
        sent = report.sent if report is not None else None
    return FitResult(timer.intervals(), timer.bodies(), t1 - t0, cpu1 - cpu0, sent)


def pct(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.2f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed fits per mode (default 5)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per fit (default 10)")
    parser.add_argument("--warmup-epochs", type=int, default=2, help="epochs of the warm-up fit per mode (default 2)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (epoch 0 is excluded from the per-epoch figures)")

    import keras
    import redis

    from examples import digits
    from pipeline.config import Settings

    data = digits.load_data()
    steps = -(-len(data[0][0]) // BATCH_SIZE)
    stream = _common.unique_stream()
    results = {mode: ModeResults() for mode in MODES}
    print(f"publisher_overhead: {_common.machine_line()}")
    print(
        f"keras {keras.__version__} ({keras.backend.backend()}), digits MLP hidden=64, "
        f"{len(data[0][0])} train / {len(data[1][0])} val samples, batch_size={BATCH_SIZE} -> {steps} batches/epoch, "
        f"epochs={args.epochs}, repeats={args.repeats}, stream={stream}"
    )
    t_start = time.perf_counter()
    with _common.temp_dir() as home:
        settings = Settings(redis_url=_common.REDIS_URL, stream=stream, home=home)
        try:
            for mode in MODES:  # warm-up: tracing, imports, first Redis connection
                one_fit(mode, data, args.warmup_epochs, settings)
            for r in range(args.repeats):
                order = MODES[r % 3:] + MODES[: r % 3]
                for mode in order:
                    results[mode].fits.append(one_fit(mode, data, args.epochs, settings))
                print(f"  repeat {r + 1}/{args.repeats} done ({' -> '.join(order)})", flush=True)
            stream_len = redis.Redis.from_url(_common.REDIS_URL).xlen(stream)
        finally:
            _common.delete_stream_keys(_common.REDIS_URL, stream)

    base = results["baseline"]
    b_epoch, b_body = _common.median(base.intervals()), _common.median(base.bodies())
    b_fit = _common.median([f.fit_s for f in base.fits])
    b_cpu = _common.median([f.cpu_s for f in base.fits])
    rows = []
    verdicts = []
    for mode in MODES:
        res = results[mode]
        epoch, body = _common.median(res.intervals()), _common.median(res.bodies())
        fit = _common.median([f.fit_s for f in res.fits])
        cpu = _common.median([f.cpu_s for f in res.fits])
        per_fit = res.per_fit_medians()
        spread = (max(per_fit) - min(per_fit)) / _common.median(per_fit) * 100
        sent = [f.events_sent for f in res.fits if f.events_sent is not None]
        target = TARGETS[mode]
        rows.append([
            mode,
            len(res.fits),
            f"{_common.median(sent):.0f}" if sent else "-",
            f"{epoch * 1000:.2f}",
            "-" if mode == "baseline" else pct(epoch, b_epoch),
            f"{spread:.1f}%",
            f"{body * 1000:.2f}",
            "-" if mode == "baseline" else pct(body, b_body),
            f"{fit:.3f}",
            "-" if mode == "baseline" else pct(fit, b_fit),
            f"{cpu:.3f}",
            "-" if mode == "baseline" else pct(cpu, b_cpu),
            "-" if target is None else f"<= {target:g}%",
        ])
        if target is not None:
            overhead = (epoch / b_epoch - 1) * 100
            verdicts.append(
                f"  {mode:<12} per-epoch overhead {overhead:+.2f}% vs target <= {target:g}%: "
                f"{'met' if overhead <= target else 'NOT met'} (noise: spread {spread:.1f}%)"
            )

    print()
    print(_common.table(
        ["mode", "fits", "events/fit", "median epoch ms", "overhead", "spread", "epoch body ms", "overhead",
         "median fit s", "overhead", "CPU/fit s", "overhead", "target"],
        rows,
    ))
    print()
    print("per-fit median epoch (ms), in the order run:")
    print(_common.table(
        ["mode", *[f"rep {i + 1}" for i in range(args.repeats)]],
        [[m, *[f"{t * 1000:.2f}" for t in results[m].per_fit_medians()]] for m in MODES],
    ))
    print()
    expected = sum(f.events_sent or 0 for m in MODES for f in results[m].fits)
    print(f"events in the stream at the end: {stream_len} (includes warm-up fits; timed fits sent {expected})")
    print("targets (epoch interval overhead vs baseline, same run):")
    print("\n".join(verdicts))
    print(f"total benchmark time {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
