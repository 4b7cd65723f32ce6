"""Latency and per-job overhead of the queue path: ``submit`` → Celery → worker child → ``model.fit``.

What is measured (same run, same machine):

* **submit → run_started** and **submit → first epoch_end**: from ``submit_job`` returning to the
  worker's events (the event's own ``ts``; one clock, one machine).
* **per-job overhead** = (submit → run_finished) − the fit's own wall time (``run_finished.wall_time_s``):
  everything the queue path adds — broker hop, a fresh child process, importing TensorFlow,
  loading data and building the model.
* **peer**: the same job's fit run in this process with the same callbacks (TensorFlow already
  imported), so the table shows what a queued job costs over training in a warm interpreter.

A real ``fitstream worker`` (prefork, one job per child) runs on a private queue; jobs are the
bundled digits example cut to ``--epochs`` epochs. No timing is asserted anywhere.

    .venv/bin/python benchmarks/queue_path.py --jobs 5 --epochs 3            # back to back
    .venv/bin/python benchmarks/queue_path.py --jobs 5 --epochs 3 --gap 8    # idle worker between jobs
    .venv/bin/python benchmarks/queue_path.py --jobs 6 --epochs 3 --queued   # all queued at once

``--queued`` submits every job up front and reports the **handover**: from one job's
``run_finished`` to the next job's ``run_started`` (both the worker's own timestamps), which is
what a sweep of short trials waits between trials. Target: ≤ 1 s with a warm spare child.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

from _common import REDIS_URL, REPO, delete_stream_keys, running_worker, temp_dir, unique_stream


def _setup(home, stream_name: str, epochs: int):  # type: ignore[no-untyped-def]
    """The worker's environment, the settings and the job (the bundled digits example cut to
    ``epochs`` epochs, no EarlyStopping) of one benchmark run."""
    from pipeline.config import Settings
    from pipeline.jobs import load_spec, parse_spec

    env = {
        **os.environ,
        "FITSTREAM_STREAM": stream_name,
        "FITSTREAM_HOME": str(home),
        "FITSTREAM_REDIS_URL": REDIS_URL,
    }
    settings = Settings(redis_url=REDIS_URL, stream=stream_name, home=home)
    base = load_spec(REPO / "examples" / "digits_mlp.yaml").model_dump(mode="json", by_alias=True)
    base["fit"]["epochs"] = epochs
    base["fit"]["verbose"] = 0
    base["early_stopping"] = None
    return env, settings, parse_spec(base)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--gap", type=float, default=0.0, help="idle seconds between jobs (lets the next child warm up)"
    )
    parser.add_argument(
        "--boot",
        type=float,
        default=15.0,
        help="--queued: seconds the worker gets to boot and warm its children",
    )
    parser.add_argument("--show-log", action="store_true", help="--queued: print the worker's log")
    parser.add_argument(
        "--queued", action="store_true", help="submit every job at once; report the handover between jobs"
    )
    args = parser.parse_args()
    if args.queued:
        return queued(args)

    from pipeline.bus import EventStream
    from pipeline.run_watch import follow_run
    from workers.submit import submit_job

    stream_name = unique_stream()
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    with temp_dir() as home:
        env, settings, spec = _setup(home, stream_name, args.epochs)
        with running_worker(queue, env, home / "worker.log"):
            time.sleep(3)  # worker boot, not part of any job
            stream = EventStream(settings=settings)
            rows = []
            for index in range(args.jobs):
                if index and args.gap:
                    time.sleep(args.gap)
                t_submit = time.time()
                submitted = submit_job(spec, queue=queue, settings=settings)
                started = first_epoch = finished = None
                for event in follow_run(stream, submitted.run_id, start_id=submitted.stream_id, timeout=300):
                    if event.type == "run_started" and started is None:
                        started = event.ts
                    elif event.type == "epoch_end" and first_epoch is None:
                        first_epoch = event.ts
                    elif event.type == "run_finished":
                        finished = event
                if finished is None:
                    raise SystemExit(f"job {index} did not finish; see {home / 'worker.log'}")
                total = finished.ts - t_submit
                rows.append(
                    {
                        "to_started": started - t_submit,
                        "to_first_epoch": first_epoch - t_submit,
                        "total": total,
                        "fit": finished.wall_time_s,
                        "overhead": total - finished.wall_time_s,
                    }
                )
                print(
                    f"  job {index + 1}/{args.jobs}: submit→run_started {rows[-1]['to_started']:.2f}s, "
                    f"→first epoch {rows[-1]['to_first_epoch']:.2f}s, total {total:.2f}s, fit {finished.wall_time_s:.2f}s",
                    flush=True,
                )

        # Peer: the same fit in this (warm) process, with the same callbacks, no queue.
        import keras

        from pipeline import EventPublisher
        from pipeline.examples import digits

        peer = []
        (x, y), validation = digits.load_data()
        for _ in range(min(args.jobs, 3)):
            model = digits.build_model(hidden=64, learning_rate=0.01)
            checkpoint = keras.callbacks.ModelCheckpoint(str(home / "peer.keras"), save_best_only=True)
            publisher = EventPublisher(name="peer", settings=settings, watch=[checkpoint])
            t0 = time.perf_counter()
            model.fit(
                x,
                y,
                validation_data=validation,
                epochs=args.epochs,
                batch_size=32,
                verbose=0,
                callbacks=[
                    keras.callbacks.TerminateOnNaN(),
                    checkpoint,
                    keras.callbacks.CSVLogger(str(home / "peer.csv")),
                    publisher,
                ],
            )
            peer.append(time.perf_counter() - t0)
        delete_stream_keys(REDIS_URL, stream_name)

    def line(name: str, values: list[float]) -> str:
        return f"{name:<32} {statistics.median(values):>8.2f} {_percentile(values, 0.9):>8.2f} {min(values):>8.2f} {max(values):>8.2f}"

    print()
    print(
        f"queue path: {args.jobs} jobs of the digits MLP, {args.epochs} epochs each, one real worker, "
        f"{args.gap:g}s idle between jobs (seconds)"
    )
    print(f"{'':<32} {'median':>8} {'p90':>8} {'min':>8} {'max':>8}")
    print(line("submit → run_started", [r["to_started"] for r in rows]))
    print(line("submit → first epoch_end", [r["to_first_epoch"] for r in rows]))
    print(line("submit → run_finished", [r["total"] for r in rows]))
    print(line("fit wall time (in the worker)", [r["fit"] for r in rows]))
    print(line("per-job overhead of the queue", [r["overhead"] for r in rows]))
    print(line("peer: same fit, warm process", peer))
    ratio = statistics.median(r["total"] for r in rows) / statistics.median(peer)
    print(f"queued job end to end / warm in-process fit: {ratio:.2f}x")


def queued(args: argparse.Namespace) -> None:
    """Every job submitted at once: from each job's run_finished to the next one's run_started."""
    from pipeline.bus import EventStream
    from pipeline.run_watch import follow_run
    from workers.submit import submit_job

    stream_name = unique_stream()
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    with temp_dir() as home:
        env, settings, spec = _setup(home, stream_name, args.epochs)
        with running_worker(queue, env, home / "worker.log"):
            time.sleep(args.boot)  # worker boot and its children's imports, not part of any job
            stream = EventStream(settings=settings)
            submitted = [submit_job(spec, queue=queue, settings=settings) for _ in range(args.jobs)]
            spans = []
            for index, job in enumerate(submitted):
                started = finished = None
                for event in follow_run(stream, job.run_id, start_id=job.stream_id, timeout=300):
                    if event.type == "run_started" and started is None:
                        started = event.ts
                    elif event.type == "run_finished":
                        finished = event.ts
                if started is None or finished is None:
                    raise SystemExit(f"job {index} did not finish; see {home / 'worker.log'}")
                spans.append((started, finished))
                print(
                    f"  job {index + 1}/{args.jobs}: run_started {started:.2f}, run_finished {finished:.2f}",
                    flush=True,
                )
        delete_stream_keys(REDIS_URL, stream_name)
        if args.show_log:
            print((home / "worker.log").read_text(errors="replace"))
    overlaps = sum(1 for (_, end), (start, _) in zip(spans, spans[1:]) if start < end)
    handovers = [start - end for (_, end), (start, _) in zip(spans, spans[1:])]
    print()
    print(
        f"queued: {args.jobs} jobs of the digits MLP submitted at once, {args.epochs} epochs each, one real worker"
    )
    print(f"{'':<40} {'median':>8} {'p90':>8} {'min':>8} {'max':>8}")
    print(
        f"{'run_finished → next run_started (s)':<40} {statistics.median(handovers):>8.2f} "
        f"{_percentile(handovers, 0.9):>8.2f} {min(handovers):>8.2f} {max(handovers):>8.2f}"
    )
    print("each handover (s): " + ", ".join(f"{h:.2f}" for h in handovers))
    print(f"jobs that started before the previous one finished: {overlaps} (one job at a time: 0)")


if __name__ == "__main__":
    main()
