"""``metric_summaries``: per run and metric, the best and the last value, kept by the recorder.

"Best runs by a metric" over ``epoch_metrics`` reads every epoch of every run (403 ms at 10 M rows in
``benchmarks/history_queries.py``); over ``metric_summaries`` it is an index range scan. Each row
holds ``min_value``/``min_epoch``, ``max_value``/``max_epoch`` (the earliest epoch that reached it)
and ``last_value``/``last_epoch`` over the run's recorded epochs of that metric; NaN and missing
values are left out of the minimum and maximum.

The recorder folds each batch's *new* epochs in (:func:`fold`): an epoch already recorded (a replay,
or an attempt that ran it again) is skipped here as ``epoch_metrics`` keeps its first value, so the
summary always agrees with ``epoch_metrics``. :func:`rebuild` recomputes every row from
``epoch_metrics`` (migration 0011, ``fitstream db rebuild-summaries``).

Example::

    >>> fold_rows([("r1", "loss", 0, 0.9), ("r1", "loss", 1, 0.7), ("r1", "loss", 2, 0.8)])
    [('r1', 'loss', 0.7, 1, 0.9, 0, 0.8, 2)]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.db import bulk
from pipeline.db.models import SqlMetricSummary

#: (run_id, name, min_value, min_epoch, max_value, max_epoch, last_value, last_epoch)
SummaryRow = tuple[str, str, Any, Any, Any, Any, Any, int]
COLUMNS = ("run_id", "name", "min_value", "min_epoch", "max_value", "max_epoch", "last_value", "last_epoch")


def _fold(acc: dict[tuple[str, str], list[Any]], run_id: str, name: str, epoch: int, value: Any) -> None:
    """One value into ``acc`` ((run, metric) -> [min, its epoch, max, its epoch, last, its epoch]),
    in whatever order the epochs come."""
    number = value if value is not None and value == value else None  # value == value: not NaN
    s = acc.get((run_id, name))
    if s is None:
        at = epoch if number is not None else None
        acc[(run_id, name)] = [number, at, number, at, value, epoch]
        return
    if number is not None:
        if s[0] is None or number < s[0] or (number == s[0] and epoch < s[1]):
            s[0], s[1] = number, epoch
        if s[2] is None or number > s[2] or (number == s[2] and epoch < s[3]):
            s[2], s[3] = number, epoch
    if epoch > s[5]:
        s[4], s[5] = value, epoch


def accumulate(
    acc: dict[tuple[str, str], list[Any]], run_id: str, epoch: int, metrics: dict[str, Any]
) -> None:
    """Fold one epoch's metrics into ``acc``, as the recorder builds a batch's rows (its reader
    thread: off the write path)."""
    for name, value in metrics.items():
        _fold(acc, run_id, name, epoch, value)


def accumulated(acc: dict[tuple[str, str], list[Any]]) -> list[SummaryRow]:
    return [(run_id, name, *s) for (run_id, name), s in sorted(acc.items())]


def fold_rows(rows: Iterable[tuple[str, str, int, Any]]) -> list[SummaryRow]:
    """One summary row per (run, metric) from ``epoch_metrics`` rows (run_id, name, epoch, value)."""
    acc: dict[tuple[str, str], list[Any]] = {}
    for run_id, name, epoch, value in rows:
        _fold(acc, run_id, name, epoch, value)
    return accumulated(acc)


_EXISTING_EPOCHS = """
WITH wanted(run_id, lo, hi) AS (VALUES {values})
SELECT e.run_id, e.epoch FROM epochs e JOIN wanted w ON e.run_id = w.run_id AND e.epoch BETWEEN w.lo AND w.hi
"""


def recorded_epochs(conn: Connection, epochs: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
    """Which of these (run_id, epoch) pairs ``epochs`` already holds (before a batch writes its own)."""
    spans: dict[str, list[int]] = {}
    for run_id, epoch in epochs:
        span = spans.setdefault(run_id, [epoch, epoch])
        span[0], span[1] = min(span[0], epoch), max(span[1], epoch)
    found: set[tuple[str, int]] = set()
    items = sorted(spans.items())
    for start in range(0, len(items), 300):  # 900 parameters a statement at most
        chunk = items[start : start + 300]
        values = ", ".join(f"(:r{i}, :lo{i}, :hi{i})" for i in range(len(chunk)))
        params: dict[str, Any] = {}
        for i, (run_id, (lo, hi)) in enumerate(chunk):
            params.update({f"r{i}": run_id, f"lo{i}": lo, f"hi{i}": hi})
        found.update(
            (r, int(e)) for r, e in conn.execute(sa.text(_EXISTING_EPOCHS.format(values=values)), params)
        )
    return found


def fold(conn: Connection, rows: Sequence[SummaryRow]) -> None:
    """Merge summary rows of new epochs into ``metric_summaries`` (in the caller's transaction)."""
    if not rows:
        return
    table = SqlMetricSummary.__table__
    insert = bulk.upsert_insert(conn, table)
    cur, new = table.c, insert.excluded
    lower = sa.or_(
        cur.min_value.is_(None),
        sa.and_(
            new.min_value.is_not(None),
            sa.or_(
                new.min_value < cur.min_value,
                sa.and_(new.min_value == cur.min_value, new.min_epoch < cur.min_epoch),
            ),
        ),
    )
    higher = sa.or_(
        cur.max_value.is_(None),
        sa.and_(
            new.max_value.is_not(None),
            sa.or_(
                new.max_value > cur.max_value,
                sa.and_(new.max_value == cur.max_value, new.max_epoch < cur.max_epoch),
            ),
        ),
    )
    later = new.last_epoch > cur.last_epoch
    statement = insert.on_conflict_do_update(
        index_elements=[cur.run_id, cur.name],
        set_={
            "min_value": sa.case((lower, new.min_value), else_=cur.min_value),
            "min_epoch": sa.case((lower, new.min_epoch), else_=cur.min_epoch),
            "max_value": sa.case((higher, new.max_value), else_=cur.max_value),
            "max_epoch": sa.case((higher, new.max_epoch), else_=cur.max_epoch),
            "last_value": sa.case((later, new.last_value), else_=cur.last_value),  # NaN as recorded
            "last_epoch": sa.case((later, new.last_epoch), else_=cur.last_epoch),
        },
    )
    conn.execute(statement, [dict(zip(COLUMNS, row)) for row in rows])


def rebuild(conn: Connection) -> int:
    """Recompute every row from ``epoch_metrics`` (rows of runs without metrics go); returns the count."""
    # NaN: kept as NaN by PostgreSQL (and sorted above every number), stored as NULL by SQLite.
    number = "value <> 'NaN'" if conn.dialect.name == "postgresql" else "value IS NOT NULL"
    conn.execute(sa.text("DELETE FROM metric_summaries"))
    conn.execute(
        sa.text(f"""
INSERT INTO metric_summaries (run_id, name, min_value, max_value, last_epoch)
SELECT run_id, name, min(value) FILTER (WHERE {number}), max(value) FILTER (WHERE {number}), max(epoch)
FROM epoch_metrics GROUP BY run_id, name""")
    )
    conn.execute(
        sa.text("""
UPDATE metric_summaries SET
  min_epoch = (SELECT min(m.epoch) FROM epoch_metrics m WHERE m.run_id = metric_summaries.run_id
               AND m.name = metric_summaries.name AND m.value = metric_summaries.min_value),
  max_epoch = (SELECT min(m.epoch) FROM epoch_metrics m WHERE m.run_id = metric_summaries.run_id
               AND m.name = metric_summaries.name AND m.value = metric_summaries.max_value),
  last_value = (SELECT m.value FROM epoch_metrics m WHERE m.run_id = metric_summaries.run_id
                AND m.name = metric_summaries.name AND m.epoch = metric_summaries.last_epoch)""")
    )
    return int(conn.execute(sa.text("SELECT count(*) FROM metric_summaries")).scalar() or 0)
