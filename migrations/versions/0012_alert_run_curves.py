"""``alert_runs.recent_metrics``: the last epochs of each metric of a run, as the alerter saw them.

The alerter draws a sparkline of the metric in the Slack and webhook messages it sends; it keeps the
values it needs itself (JSON: the run's monitored metric and, per metric, the last epochs' values)
instead of reading what the recorder, another consumer group, may not have written yet.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alert_runs") as batch:
        batch.add_column(sa.Column("recent_metrics", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alert_runs") as batch:
        batch.drop_column("recent_metrics")
