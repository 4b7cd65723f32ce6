"""Promotion time: ``early_stopped`` published → ``champion`` moved, through the real promoter.

A real ``ConsumerLoop(Promoter)`` (with its Keras load-check helper, warmed as in production)
consumes a unique stream; for each repeat the script publishes a run's ``run_started`` and
``checkpoint_saved`` events, then times from the ``early_stopped`` XADD until the promoter's
``model_promoted`` event (published after the alias is committed) arrives. Each checkpoint is a
real Keras model file (~1 MB and ~100 MB of float32 weights), each repeat slightly better so
that ``champion`` moves every time.

Peers, same file, same disk, same run:

* ``copy``: ``shutil.copyfile`` (a kernel copy into the page cache; nothing reaches the disk);
* ``copy+fsync``: the same followed by ``fsync`` — what a copy has to do before a registry may
  point at it (the promoter fsyncs before the rename and the SQL commit);
* ``sha256``: hashing the file alone, the floor for any promotion that verifies its checksum.

Targets: < 1 s for 1 MB; within 1.5× of a plain copy for 100 MB.

    .venv/bin/python benchmarks/promotion.py              # --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time

from _common import REDIS_URL, delete_stream_keys, machine_line, median, table, temp_dir, unique_stream


def make_checkpoint(path: str, megabytes: float) -> str:
    import keras

    units = max(1, int(megabytes * 1e6 / 4 / 1024))
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(units), keras.layers.Dense(1)])
    model.save(path)
    from pipeline.store.copying import file_sha256

    return file_sha256(path)


def timed(function) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def copy_then_fsync(source: str, target: str) -> None:
    shutil.copyfile(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def measure(megabytes: float, repeats: int) -> dict[str, object]:
    import redis

    from pipeline import events as ev
    from pipeline.bus import EventStream
    from pipeline.config import Settings
    from pipeline.consumers.base import ConsumerLoop
    from pipeline.consumers.promoter import Promoter, PromotionLocks
    from pipeline.db import migrate
    from pipeline.db.session import make_engine
    from pipeline.promotion.load_check import KerasLoadCheck
    from pipeline.store import open_store
    from pipeline.store.copying import file_sha256

    stream_key = unique_stream()
    with temp_dir() as home:
        settings = Settings(
            redis_url=REDIS_URL, database_url=f"sqlite:///{home / 'bench.db'}", home=home, stream=stream_key
        )
        migrate.upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        source = str(home / "best.keras")
        sha = make_checkpoint(source, megabytes)
        size = os.path.getsize(source)
        stream = EventStream(settings=settings)
        stream.ensure_group("promoter")
        load_check = KerasLoadCheck()
        promoter = Promoter(
            engine,
            open_store(settings.model_store_url),
            publish=stream.publish,
            load_check=load_check,
            locks=PromotionLocks(stream.client, stream.stream),
        )
        load_check.check(source)  # the helper has imported Keras, as a promoter that waited for events has
        loop = ConsumerLoop(promoter, stream, consumer_name="bench-promoter")
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        client = redis.Redis.from_url(REDIS_URL)
        name = f"bench-{megabytes:g}mb"
        promote_s: dict[str, list[float]] = {"prefetched": [], "cold": []}
        copy_s, durable_s, hash_s = [], [], []
        try:
            for i in range(repeats):
                for mode in ("prefetched", "cold"):
                    run_id = f"bench-{mode}-{i}"
                    value = 1.0 - len(copy_s) / 100 - (0.001 if mode == "cold" else 0)
                    os.utime(source)  # a new modification time: the promoter has not loaded this file yet
                    stream.publish(
                        [
                            ev.build(ev.RunStarted, run_id=run_id, seq=0, name=name),
                            ev.build(
                                ev.CheckpointSaved,
                                run_id=run_id,
                                seq=1,
                                path=source,
                                epoch=3,
                                monitor="val_loss",
                                value=value,
                                sha256=sha,
                            ),
                        ]
                    )
                    if mode == "prefetched":
                        # As in training: EarlyStopping fires `patience` epochs after the best checkpoint,
                        # by which time the promoter has loaded it (it starts on checkpoint_saved).
                        load_check.result(load_check.submit(source))
                    os.sync()
                    last_id = client.xinfo_stream(stream_key)[
                        "last-generated-id"
                    ]  # the answer comes after it
                    started = time.perf_counter()
                    stream.publish(
                        [
                            ev.build(
                                ev.EarlyStopped,
                                run_id=run_id,
                                seq=2,
                                stopped_epoch=5,
                                best_epoch=3,
                                best_value=value,
                                monitor="val_loss",
                                mode="min",
                            )
                        ]
                    )
                    answer = _await_promotion(client, stream_key, last_id, run_id)
                    promote_s[mode].append(time.perf_counter() - started)
                    if answer.type != "model_promoted" or not answer.champion:
                        raise SystemExit(f"run {run_id} was not promoted to champion: {answer}")
                os.sync()
                copy_s.append(timed(lambda: shutil.copyfile(source, str(home / f"plain-{i}.keras"))))
                os.sync()
                durable_s.append(timed(lambda: copy_then_fsync(source, str(home / f"durable-{i}.keras"))))
                hash_s.append(timed(lambda: file_sha256(source)))
        finally:
            loop.stop_event.set()
            thread.join(timeout=30)
            load_check.close()
            engine.dispose()
            delete_stream_keys(REDIS_URL, stream_key)
    return {
        "megabytes": size / 1e6,
        "promote": median(promote_s["prefetched"]),
        "max": max(promote_s["prefetched"]),
        "cold": median(promote_s["cold"]),
        "copy": median(copy_s),
        "durable": median(durable_s),
        "sha256": median(hash_s),
    }


def _await_promotion(client, stream_key: str, after: str, run_id: str):  # type: ignore[no-untyped-def]
    from pipeline import events as ev

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for _key, entries in client.xread({stream_key: after}, block=1000) or []:
            for entry_id, fields in entries:
                after = entry_id
                event = ev.decode(fields)
                if event.run_id == run_id and event.type in ("model_promoted", "promotion_skipped"):
                    return event
    raise SystemExit(f"no promotion of {run_id} within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes-mb", default="1,100", help="checkpoint sizes, comma-separated")
    args = parser.parse_args()
    print(machine_line())
    rows = []
    for megabytes in (float(s) for s in args.sizes_mb.split(",")):
        r = measure(megabytes, args.repeats)
        p = r["promote"]
        if r["megabytes"] < 10:
            verdict = "< 1 s: " + ("met" if p < 1 else "NOT met")
        else:
            verdict = (
                f"≤ 1.5× copy+fsync: {'met' if p <= 1.5 * r['durable'] else 'NOT met'}; "
                f"≤ 1.5× copy: {'met' if p <= 1.5 * r['copy'] else 'NOT met'}"
            )
        rows.append(
            [
                f"{r['megabytes']:.1f} MB",
                f"{p:.3f}",
                f"{r['max']:.3f}",
                f"{r['cold']:.3f}",
                f"{r['copy']:.3f}",
                f"{p / r['copy']:.2f}",
                f"{r['durable']:.3f}",
                f"{p / r['durable']:.2f}",
                f"{r['sha256']:.3f}",
                verdict,
            ]
        )
    print(
        f"early_stopped → champion moved, median of {args.repeats} (seconds); 'promote' = checkpoint loaded during the"
    )
    print(
        "patience epochs (as in training), 'cold' = checkpoint_saved and early_stopped back to back (load on the critical path)"
    )
    print(
        table(
            [
                "checkpoint",
                "promote",
                "max",
                "cold",
                "copy",
                "ratio",
                "copy+fsync",
                "ratio",
                "sha256 alone",
                "target",
            ],
            rows,
            align="lrrrrrrrrl",
        )
    )


if __name__ == "__main__":
    main()
