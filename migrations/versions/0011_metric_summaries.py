"""``metric_summaries``: per run and metric, the lowest, highest and last value and their epochs.

Kept by the recorder from each batch's new epochs; filled here from the ``epoch_metrics`` already
recorded (one pass over the table). See ``pipeline.db.summaries``.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_summaries",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("min_value", sa.Float()),
        sa.Column("min_epoch", sa.Integer()),
        sa.Column("max_value", sa.Float()),
        sa.Column("max_epoch", sa.Integer()),
        sa.Column("last_value", sa.Float()),
        sa.Column("last_epoch", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "name", name="pk_metric_summaries"),
    )
    op.create_index("ix_metric_summaries_name_min_value", "metric_summaries", ["name", "min_value"])
    op.create_index("ix_metric_summaries_name_max_value", "metric_summaries", ["name", "max_value"])
    from pipeline.db.summaries import rebuild  # the same SQL as `fitstream db rebuild-summaries`

    rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_metric_summaries_name_max_value", "metric_summaries")
    op.drop_index("ix_metric_summaries_name_min_value", "metric_summaries")
    op.drop_table("metric_summaries")
