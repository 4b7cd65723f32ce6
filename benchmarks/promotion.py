"""Promotion time: ``early_stopped`` handled → version registered and ``champion`` moved.

For a ~1 MB and a ~100 MB checkpoint (a valid ``.keras`` zip of random weights), timed around
``promote_run`` (check the zip, copy into the store while hashing, register in SQL, move the
alias), side by side with the peer: a plain ``shutil.copyfile`` of the same file on the same disk
(kernel copy, no hashing), and, for reference, a userspace copy that also computes sha256.
Targets: < 1 s for 1 MB; within 1.5× of the plain copy for 100 MB.

    .venv/bin/python benchmarks/promotion.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import time
import zipfile

from _common import temp_dir


def make_checkpoint(path: str, megabytes: int) -> str:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("config.json", '{"class_name": "Sequential"}')
        archive.writestr("model.weights.h5", os.urandom(megabytes * 1024 * 1024))
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def main() -> None:
    from pipeline.consumers.promoter import promote_run
    from pipeline.db import migrate
    from pipeline.db.models import SqlPromoterCheckpoint, SqlPromoterRun
    from pipeline.db.session import make_engine
    from pipeline.store import open_store

    print(f"{'size':>8} {'promote s (median)':>20} {'plain copy s':>14} {'ratio':>7} {'copy+sha256 s':>14} {'target':>24}")
    for megabytes, repeats in ((1, 5), (100, 3)):
        with temp_dir() as home:
            url = f"sqlite:///{home / 'bench.db'}"
            migrate.upgrade(url)
            engine = make_engine(url)
            store = open_store(str(home / "store"))
            source = str(home / "best.keras")
            sha = make_checkpoint(source, megabytes)
            promote_times, copy_times, hashed_times = [], [], []
            for i in range(repeats):
                run_id = f"run{i}"
                with engine.begin() as conn:
                    conn.execute(SqlPromoterRun.__table__.insert(), {"run_id": run_id, "name": f"bench-{megabytes}mb"})
                    conn.execute(SqlPromoterCheckpoint.__table__.insert(), {"run_id": run_id, "epoch": 3, "path": source, "monitor": "val_loss", "value": 1.0 - i / 100, "sha256": sha})
                t0 = time.perf_counter()
                promote_run(engine, store, run_id, best_epoch=3, metric="val_loss", mode="min")
                promote_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                shutil.copyfile(source, str(home / f"plain-{i}.keras"))
                copy_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                digest = hashlib.sha256()
                with open(source, "rb") as reader, open(str(home / f"hashed-{i}.keras"), "wb") as writer:
                    for chunk in iter(lambda: reader.read(4 << 20), b""):
                        digest.update(chunk)
                        writer.write(chunk)
                hashed_times.append(time.perf_counter() - t0)
            engine.dispose()
        p, c = statistics.median(promote_times), statistics.median(copy_times)
        target = "< 1 s: " + ("met" if p < 1 else "NOT met") if megabytes == 1 else "<= 1.5x copy: " + ("met" if p <= 1.5 * c else "NOT met")
        h = statistics.median(hashed_times)
        print(f"{megabytes:>6}MB {p:>20.3f} {c:>14.3f} {p / c:>7.2f} {h:>14.3f} {target:>24}")


if __name__ == "__main__":
    main()
