"""Retention of batch curves: raw ``batch_metrics`` rows for a while, a downsampled copy for good.

The raw rows of a run whose last event (``runs.last_event_at``) is older than the retention period
are replaced, in one transaction per group of runs, by ``batch_metric_buckets``: per metric and per
bucket of ``bucket_steps`` steps, the bucket's first step (a multiple of ``bucket_steps``, the key),
the last step it holds, the epoch it starts in, the number of raw rows, their min and max, and the
value at the last step. A run still training keeps its raw rows. Running it twice, or killed
half-way, gives the same result: buckets are inserted only when missing (a batch replayed after its
run was downsampled adds nothing), and the raw rows go in the same transaction.

The recorder runs it every ``FITSTREAM_BATCH_METRICS_COMPACT_EVERY_SECONDS`` (one hour);
``fitstream db compact-batch-metrics`` runs it now.

Example:
    >>> report = compact_batch_metrics(engine, retention_days=30, bucket_steps=100)  # doctest: +SKIP
    >>> report.runs, report.raw_rows_removed, report.buckets_written                  # doctest: +SKIP
    (3, 12000, 120)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.db.session import transaction

#: Runs downsampled per transaction (each may hold many raw rows).
RUNS_PER_TRANSACTION = 20

_DUE_RUNS = sa.text(
    "SELECT r.run_id FROM runs r WHERE r.last_event_at < :cutoff "
    "AND EXISTS (SELECT 1 FROM batch_metrics b WHERE b.run_id = r.run_id) ORDER BY r.run_id LIMIT :limit"
)

_BUCKETS = """
INSERT INTO batch_metric_buckets (run_id, name, first_step, last_step, epoch, count, min_value, max_value, last_value)
SELECT g.run_id, g.name, g.first_step, g.last_step, g.epoch, g.n, g.min_value, g.max_value, b.value
FROM (
  SELECT run_id, name, (step / :bucket_steps) * :bucket_steps AS first_step, MAX(step) AS last_step,
         MIN(epoch) AS epoch, COUNT(*) AS n, MIN(value) AS min_value, MAX(value) AS max_value
  FROM batch_metrics WHERE run_id IN :run_ids GROUP BY run_id, name, step / :bucket_steps
) AS g JOIN batch_metrics b ON b.run_id = g.run_id AND b.name = g.name AND b.step = g.last_step
WHERE true
ON CONFLICT DO NOTHING
"""

_DELETE = sa.text("DELETE FROM batch_metrics WHERE run_id IN :run_ids").bindparams(
    sa.bindparam("run_ids", expanding=True)
)


@dataclass(frozen=True)
class CompactionReport:
    """What one compaction did."""

    runs: int = 0
    raw_rows_removed: int = 0
    buckets_written: int = 0


def compact_batch_metrics(
    engine: Engine,
    *,
    retention_days: float,
    bucket_steps: int,
    now: datetime | None = None,
    max_runs: int | None = None,
) -> CompactionReport:
    """Downsample the batch curves of every run quiet for ``retention_days`` (at most ``max_runs``)."""
    if bucket_steps < 1:
        raise ValueError(f"bucket_steps must be a positive number of steps; got {bucket_steps!r}")
    if retention_days < 0:
        raise ValueError(f"retention_days must be 0 or more; got {retention_days!r}")
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=retention_days)
    runs = removed = buckets = 0
    while max_runs is None or runs < max_runs:
        limit = RUNS_PER_TRANSACTION if max_runs is None else min(RUNS_PER_TRANSACTION, max_runs - runs)
        with transaction(engine) as conn:
            run_ids = list(conn.execute(_DUE_RUNS, {"cutoff": cutoff, "limit": limit}).scalars())
            if not run_ids:
                break
            written, deleted = _compact(conn, run_ids, bucket_steps)
        runs, removed, buckets = runs + len(run_ids), removed + deleted, buckets + written
    return CompactionReport(runs=runs, raw_rows_removed=removed, buckets_written=buckets)


def _compact(conn: Connection, run_ids: list[str], bucket_steps: int) -> tuple[int, int]:
    statement = sa.text(_BUCKETS).bindparams(sa.bindparam("run_ids", expanding=True))
    written = conn.execute(statement, {"run_ids": run_ids, "bucket_steps": bucket_steps}).rowcount
    deleted = conn.execute(_DELETE, {"run_ids": run_ids}).rowcount
    return max(written, 0), max(deleted, 0)
