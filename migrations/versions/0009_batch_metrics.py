"""Batch curves in SQL, and each row written once.

``batch_metrics`` (one row per run, metric and batch step, step counted
across epochs) and ``batch_metric_buckets`` (the downsampled copy that outlives the raw rows).

Retention (``pipeline.db.batch_retention``): the raw rows of a run whose last event is older than
``FITSTREAM_BATCH_METRICS_RETENTION_DAYS`` are replaced by buckets of
``FITSTREAM_BATCH_METRICS_BUCKET_STEPS`` steps (min, max, last and count per bucket), kept for good.

``epochs.event_id``: the ``epoch_end`` event an epochs row records. Its raw JSON is no longer kept in
``events`` as well (nor a ``batch_end``'s): ``events`` keeps the lifecycle events, whose JSON is the
record.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("epochs") as batch:
        batch.add_column(sa.Column("event_id", sa.String(64)))
    # The key leads with run_id and name: "a run's loss curve" is one range scan. SQLite stores the
    # rows in key order (WITHOUT ROWID), PostgreSQL has the key's index and nothing else to update.
    op.create_table(
        "batch_metrics",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float()),
        sa.Column("ts", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("run_id", "name", "step", name="pk_batch_metrics"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "batch_metric_buckets",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("first_step", sa.BigInteger(), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("min_value", sa.Float()),
        sa.Column("max_value", sa.Float()),
        sa.Column("last_value", sa.Float()),
        sa.PrimaryKeyConstraint("run_id", "name", "first_step", name="pk_batch_metric_buckets"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("batch_metric_buckets")
    op.drop_table("batch_metrics")
    with op.batch_alter_table("epochs") as batch:
        batch.drop_column("event_id")
