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
* **overhead %** -- ``mode / baseline - 1`` for each figure. Because a shared
  VM can be noisy, two drift-resistant variants of the per-epoch overhead are
  shown beside it: **paired** (median over repeats of the ratio of the mode's
  and the baseline's per-fit median epoch in the *same* repeat, i.e. fits run
  next to each other) and **best-fit** (fastest fit of the mode / fastest
  baseline fit). **spread** is (max - min) / median of the per-fit median
  epoch times across repeats: read the overheads against it. A verdict is
  marked ``(noisy)`` when max(spread of mode, spread of baseline) / sqrt(fits)
  exceeds the target, i.e. the run cannot resolve it.
* **hooks ms/epoch** -- time spent inside the publisher's Keras hooks
  (``on_epoch_begin``, the first batch's learning-rate read, ``on_train_batch_end`` when batch events
  are on, ``on_test_end``, ``on_epoch_end``) on the
  training thread, per epoch, and as % of a baseline epoch: the publisher's
  direct cost, nearly free of noise (``_common.time_hooks`` wraps each hook
  the instance is really called through with two ``perf_counter`` calls). ``train_begin`` / ``train_end`` ms:
  the same for the once-per-fit hooks (``on_train_end`` flushes and joins the
  sender thread). The sender thread's own work is not in these; it shows in
  CPU/fit and in the wall-time overheads.
* **events/fit** -- ``publisher.last_report.sent`` (events that reached Redis).

Targets: per-epoch mode <= 1 % per-epoch overhead; every-batch mode <= 5 %.

``--workload convnet`` fits a CNN big enough to keep a GPU busy instead
(``benchmarks/_workloads.py``: synthetic 32×32×3 images, batch 128, 64
batches per epoch); Keras' backend is whatever ``KERAS_BACKEND`` names.

Run::

    .venv/bin/python benchmarks/publisher_overhead.py [--repeats 5] [--epochs 10] [--workload digits|convnet]

No timing is asserted; the script prints the figures and whether each target
was met on this run.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # sets TF_CPP_MIN_LOG_LEVEL and the import path
import _workloads

MODES = ("baseline", "per-epoch", "every-batch")
TARGETS = {"baseline": None, "per-epoch": 1.0, "every-batch": 5.0}


@dataclass
class FitResult:
    epoch_intervals: list[float]  # begin -> next begin (s), epoch 0 included
    epoch_bodies: list[float]  # begin -> end (s)
    fit_s: float
    cpu_s: float
    events_sent: int | None
    hook_s: dict[str, float] = field(default_factory=dict)  # publisher hooks, training thread


@dataclass
class ModeResults:
    fits: list[FitResult] = field(default_factory=list)

    def intervals(self) -> list[float]:
        return [t for f in self.fits for t in f.epoch_intervals[1:]]

    def bodies(self) -> list[float]:
        return [t for f in self.fits for t in f.epoch_bodies[1:]]

    def per_fit_medians(self) -> list[float]:
        return [_common.median(f.epoch_intervals[1:]) for f in self.fits]

    def hook_ms(self, *names: str, per_epoch: bool = False) -> float:
        """Median over fits of the time spent in the named publisher hooks (ms, per fit or per epoch)."""
        values = []
        for f in self.fits:
            total = sum(f.hook_s.get(n, 0.0) for n in names) * 1000
            values.append(total / len(f.epoch_intervals) if per_epoch else total)
        return _common.median(values)


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


def one_fit(mode: str, workload: _workloads.Workload, epochs: int, settings) -> FitResult:  # type: ignore[no-untyped-def]
    import keras

    from pipeline.callbacks.publisher import EventPublisher

    (x, y), (x_val, y_val) = workload.data
    keras.backend.clear_session()
    gc.collect()
    model = workload.build_model()  # seeded: identical weights and shuffling in every fit
    timer = make_timer()
    callbacks: list[keras.callbacks.Callback] = [timer]
    publisher = None
    if mode != "baseline":
        publisher = EventPublisher(
            name=f"bench-{mode}",
            batch_events_every=1 if mode == "every-batch" else None,
            batch_size=workload.batch_size,
            settings=settings,
        )
        publisher.hook_s = {}
        _common.time_hooks(publisher, publisher.hook_s)
        callbacks.append(publisher)
    cpu0, t0 = time.process_time(), time.perf_counter()
    model.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=workload.batch_size,
        verbose=0,
        callbacks=callbacks,
    )
    t1, cpu1 = time.perf_counter(), time.process_time()
    sent = None
    hooks: dict[str, float] = {}
    if publisher is not None:
        report = publisher.last_report
        sent = report.sent if report is not None else None
        hooks = dict(publisher.hook_s)
    return FitResult(timer.intervals(), timer.bodies(), t1 - t0, cpu1 - cpu0, sent, hooks)


def pct(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.2f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed fits per mode (default 5)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per fit (default 10)")
    parser.add_argument(
        "--warmup-epochs", type=int, default=2, help="epochs of the warm-up fit per mode (default 2)"
    )
    parser.add_argument(
        "--workload",
        choices=sorted(_workloads.WORKLOADS),
        default="digits",
        help="digits (the CPU default) or convnet (big enough to keep a GPU busy)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (epoch 0 is excluded from the per-epoch figures)")

    import redis

    from pipeline.config import Settings

    workload = _workloads.get(args.workload)
    stream = _common.unique_stream()
    results = {mode: ModeResults() for mode in MODES}
    print(f"publisher_overhead: {_common.machine_line()}")
    print(_workloads.accelerator_line())
    print(
        f"{workload.description}, batch_size={workload.batch_size} -> {workload.steps_per_epoch} batches/epoch, "
        f"epochs={args.epochs}, repeats={args.repeats}, stream={stream}"
    )
    t_start = time.perf_counter()
    with _common.temp_dir() as home:
        settings = Settings(redis_url=_common.REDIS_URL, stream=stream, home=home)
        try:
            for mode in MODES:  # warm-up: tracing, imports, first Redis connection
                one_fit(mode, workload, args.warmup_epochs, settings)
            for r in range(args.repeats):
                order = MODES[r % 3 :] + MODES[: r % 3]
                for mode in order:
                    results[mode].fits.append(one_fit(mode, workload, args.epochs, settings))
                print(f"  repeat {r + 1}/{args.repeats} done ({' -> '.join(order)})", flush=True)
            stream_len = redis.Redis.from_url(_common.REDIS_URL).xlen(stream)
        finally:
            _common.delete_stream_keys(_common.REDIS_URL, stream)

    base = results["baseline"]
    b_epoch, b_body = _common.median(base.intervals()), _common.median(base.bodies())
    b_fit = _common.median([f.fit_s for f in base.fits])
    b_cpu = _common.median([f.cpu_s for f in base.fits])
    b_per_fit = base.per_fit_medians()
    epoch_rows, fit_rows, verdicts = [], [], []
    for mode in MODES:
        res = results[mode]
        epoch, body = _common.median(res.intervals()), _common.median(res.bodies())
        fit = _common.median([f.fit_s for f in res.fits])
        cpu = _common.median([f.cpu_s for f in res.fits])
        per_fit = res.per_fit_medians()
        spread = (max(per_fit) - min(per_fit)) / _common.median(per_fit) * 100
        paired = _common.median([m / b for m, b in zip(per_fit, b_per_fit)])  # same repeat = adjacent in time
        best = min(per_fit) / min(b_per_fit)
        sent = [f.events_sent for f in res.fits if f.events_sent is not None]
        target = TARGETS[mode]
        is_base = mode == "baseline"
        overhead = (epoch / b_epoch - 1) * 100
        # Rough resolution of this comparison: the larger per-fit spread over sqrt(fits).
        b_spread = (max(b_per_fit) - min(b_per_fit)) / _common.median(b_per_fit) * 100
        resolution = max(spread, b_spread) / math.sqrt(len(per_fit))
        result = "-" if target is None else ("met" if overhead <= target else "NOT met")
        if target is not None and resolution > target:
            result += " (noisy)"
        epoch_rows.append(
            [
                mode,
                len(res.fits),
                f"{_common.median(sent):.0f}" if sent else "-",
                f"{epoch * 1000:.2f}",
                "-" if is_base else f"{overhead:+.2f}%",
                "-" if is_base else f"{(paired - 1) * 100:+.2f}%",
                "-" if is_base else f"{(best - 1) * 100:+.2f}%",
                f"{spread:.1f}%",
                f"{body * 1000:.2f}",
                "-" if is_base else pct(body, b_body),
                "-" if target is None else f"<= {target:g}%",
                result,
            ]
        )
        hooks_epoch = res.hook_ms(
            "on_epoch_begin",
            "on_train_batch_begin",
            "_read_epoch_learning_rate",
            "on_train_batch_end",
            "on_test_end",
            "on_epoch_end",
            per_epoch=True,
        )
        fit_rows.append(
            [
                mode,
                f"{fit:.3f}",
                "-" if is_base else pct(fit, b_fit),
                f"{cpu:.3f}",
                "-" if is_base else pct(cpu, b_cpu),
                "-" if is_base else f"{hooks_epoch:.3f}",
                "-" if is_base else f"{hooks_epoch / (b_epoch * 1000) * 100:.2f}%",
                "-" if is_base else f"{res.hook_ms('on_train_batch_end', per_epoch=True):.3f}",
                "-" if is_base else f"{res.hook_ms('on_train_begin'):.1f}",
                "-" if is_base else f"{res.hook_ms('on_train_end'):.1f}",
            ]
        )
        if target is not None:
            verdicts.append(
                f"  {mode:<12} median-epoch overhead {overhead:+.2f}% (paired {(paired - 1) * 100:+.2f}%, "
                f"best-fit {(best - 1) * 100:+.2f}%) vs target <= {target:g}%: "
                f"{result}; publisher hooks on the training thread "
                f"{hooks_epoch / (b_epoch * 1000) * 100:.2f}% of a baseline epoch; resolution ~{resolution:.1f}%"
            )

    print()
    print("Per-epoch wall time (epoch 0 excluded; epoch = on_epoch_begin -> next on_epoch_begin):")
    print(
        _common.table(
            [
                "mode",
                "fits",
                "events/fit",
                "median epoch ms",
                "overhead",
                "paired",
                "best-fit",
                "spread",
                "epoch body ms",
                "overhead",
                "target",
                "result",
            ],
            epoch_rows,
        )
    )
    print()
    print("Whole fit, and the publisher's own time on the training thread (medians over fits):")
    print(
        _common.table(
            [
                "mode",
                "fit s",
                "overhead",
                "CPU/fit s",
                "overhead",
                "hooks ms/epoch",
                "% baseline epoch",
                "batch hook ms/epoch",
                "train_begin ms",
                "train_end ms",
            ],
            fit_rows,
        )
    )
    print()
    print("per-fit median epoch (ms), in the order run:")
    print(
        _common.table(
            ["mode", *[f"rep {i + 1}" for i in range(args.repeats)]],
            [[m, *[f"{t * 1000:.2f}" for t in results[m].per_fit_medians()]] for m in MODES],
        )
    )
    print()
    expected = sum(f.events_sent or 0 for m in MODES for f in results[m].fits)
    print(
        f"events in the stream at the end: {stream_len} (includes warm-up fits; timed fits sent {expected})"
    )
    print(
        "paired = median over repeats of (mode / baseline) per-fit median epoch within the same repeat; "
        "best-fit = fastest fit of the mode / fastest baseline fit; spread = (max - min) / median of the "
        "mode's per-fit medians. hooks = time inside the publisher's Keras hooks (the sender thread's "
        "work is not in it; it shows in CPU/fit)."
    )
    print(
        "resolution = max(spread of mode, spread of baseline) / sqrt(fits); '(noisy)' marks a verdict finer "
        "than that: trust the hooks figure and rerun with more --repeats on a quieter machine."
    )
    print("targets (median epoch overhead vs baseline, same run):")
    print("\n".join(verdicts))
    print(f"total benchmark time {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
