"""Reading the alerts the alerter decided and the deliverer sent (``fitstream alerts list``,
``fitstream status``). The alerter's own writes are in ``alerts/``; the tables are the history
database's, like every other.

Example:
    >>> engine = make_engine("sqlite:///fitstream.db", read_only=True)  # doctest: +SKIP
    >>> alert_counts_by_status(engine)                                   # doctest: +SKIP
    {'delivered': 12, 'pending': 1}
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.models import SqlAlert

#: The columns ``fitstream alerts list`` shows, in order.
ALERT_COLUMNS = (
    "id",
    "rule",
    "run_id",
    "state",
    "channel",
    "severity",
    "status",
    "attempts",
    "created_at",
    "delivered_at",
    "last_error",
)


def list_alerts(
    engine: Engine, *, state: str | None = None, status: str | None = None, limit: int = 100
) -> list[tuple[Any, ...]]:
    """Alerts, newest first, as rows of :data:`ALERT_COLUMNS`."""
    table = SqlAlert.__table__
    query = sa.select(*(table.c[c] for c in ALERT_COLUMNS)).order_by(table.c.id.desc()).limit(limit)
    if state:
        query = query.where(table.c.state == state)
    if status:
        query = query.where(table.c.status == status)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(query)]


def alert_counts_by_status(engine: Engine) -> dict[str, int]:
    """How many alerts are pending, delivered, undelivered."""
    table = SqlAlert.__table__
    query = sa.select(table.c.status, sa.func.count()).group_by(table.c.status)
    with engine.connect() as conn:
        return {status: int(count) for status, count in conn.execute(query)}
