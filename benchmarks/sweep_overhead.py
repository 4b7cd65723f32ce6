"""Queue overhead per trial of a sweep: one ``fitstream submit`` of a 12-trial grid, one real worker.

What is measured (same run, same machine):

* **sweep wall time**: from ``submit_sweep`` returning to the last trial's ``run_finished`` (the
  event's own ``ts``).
* **per-trial overhead** = (sweep wall time − the sum of the trials' own fit times, from
  ``run_finished.wall_time_s``) / trials: the broker hop, the fresh child process per job,
  importing TensorFlow, loading data and building the model, and — with ``--max-parallel`` — the
  release of each waiting trial by the one that ended.
* **peer**: the same 12 fits one after another in this warm process, with the same callbacks
  (what a hand-written loop over the grid costs), so the table gives sweep / loop.

A real ``fitstream worker`` (prefork, one job per child) runs on a private queue; the trials are
the bundled digits example cut to ``--epochs`` epochs, over hidden × learning rate. No timing is
asserted anywhere.

    .venv/bin/python benchmarks/sweep_overhead.py                       # 12 trials, 2 epochs
    .venv/bin/python benchmarks/sweep_overhead.py --max-parallel 2      # two queued at a time
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

from _common import REDIS_URL, REPO, delete_stream_keys, running_worker, temp_dir, unique_stream

HIDDEN = [16, 32, 64]
LEARNING_RATES = [0.001, 0.003, 0.01, 0.03]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        help="the sweep's max_parallel (default: all queued at once)",
    )
    args = parser.parse_args()

    import yaml

    from pipeline.bus import EventStream
    from pipeline.config import Settings
    from pipeline.jobs import load_spec
    from pipeline.run_watch import follow_run
    from pipeline.sweeps import parse_sweep
    from workers.submit import submit_sweep

    stream_name = unique_stream()
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    with temp_dir() as home:
        env = {
            **os.environ,
            "FITSTREAM_STREAM": stream_name,
            "FITSTREAM_HOME": str(home),
            "FITSTREAM_REDIS_URL": REDIS_URL,
        }
        settings = Settings(redis_url=REDIS_URL, stream=stream_name, home=home)
        base = load_spec(REPO / "examples" / "digits_mlp.yaml").model_dump(mode="json", by_alias=True)
        base["fit"].update(epochs=args.epochs, verbose=0)
        base["early_stopping"] = None
        base["sweep"] = {
            "grid": {"model.kwargs.hidden": HIDDEN, "model.kwargs.learning_rate": LEARNING_RATES},
            "max_parallel": args.max_parallel,
        }
        sweep = parse_sweep(yaml.safe_load(yaml.safe_dump(base)))
        with running_worker(queue, env, home / "worker.log"):
            time.sleep(8)  # worker boot and its first child's TensorFlow import: not part of the sweep
            stream = EventStream(settings=settings)
            t_submit = time.time()
            submitted = submit_sweep(sweep, queue=queue, settings=settings)
            t_queued = time.time()
            finished = []
            for index, run_id in enumerate(submitted.run_ids):
                last = None
                for event in follow_run(stream, run_id, start_id=submitted.stream_id, timeout=600):
                    last = event
                if last is None or last.type != "run_finished":
                    raise SystemExit(f"trial {index + 1} did not finish; see {home / 'worker.log'}")
                finished.append(last)
                print(
                    f"  trial {index + 1}/{len(submitted.run_ids)}: {last.status}, fit {last.wall_time_s:.2f}s",
                    flush=True,
                )
        wall = max(e.ts for e in finished) - t_submit
        fits = sum(e.wall_time_s or 0.0 for e in finished)

        # Peer: the same fits one after another in this warm process, same callbacks, no queue.
        import keras

        from pipeline import EventPublisher
        from pipeline.examples import digits

        (x, y), validation = digits.load_data()
        t0 = time.perf_counter()
        for trial in sweep.trials:
            model = digits.build_model(**trial.spec.model.kwargs)
            checkpoint = keras.callbacks.ModelCheckpoint(str(home / "peer.keras"), save_best_only=True)
            publisher = EventPublisher(name="peer", settings=settings, watch=[checkpoint], batch_size=32)
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
        peer = time.perf_counter() - t0
        delete_stream_keys(REDIS_URL, stream_name)

    trials = len(finished)
    print()
    print(
        f"sweep of {trials} trials (digits MLP, {args.epochs} epochs each, hidden × learning rate), one real worker, "
        f"max_parallel {args.max_parallel or 'all'} (seconds)"
    )
    print(f"  submit (validate {trials} trials, announce, queue)   {t_queued - t_submit:8.3f}")
    print(f"  sweep wall time, submit → last run_finished       {wall:8.2f}")
    print(f"  sum of the trials' own fit times                  {fits:8.2f}")
    print(f"  queue overhead per trial                          {(wall - fits) / trials:8.2f}")
    print(f"  peer: the {trials} fits in a loop, warm process        {peer:8.2f}")
    print(f"  sweep / loop                                      {wall / peer:8.2f}x")


if __name__ == "__main__":
    main()
