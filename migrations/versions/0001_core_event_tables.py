"""Core event tables: runs, epoch_metrics, epochs, checkpoints, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Self-contained: it never imports the live ORM models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("epochs_completed", sa.Integer, nullable=False),
        sa.Column("epochs_planned", sa.Integer),
        sa.Column("best_epoch", sa.Integer),
        sa.Column("stopped_epoch", sa.Integer),
        sa.Column("monitor", sa.String(255)),
        sa.Column("mode", sa.String(8)),
        sa.Column("best_value", sa.Float),
        sa.Column("restored_best_weights", sa.Integer),
        sa.Column("model_name", sa.String(255)),
        sa.Column("params_count", sa.BigInteger),
        sa.Column("optimizer", sa.Text),
        sa.Column("batch_size", sa.Integer),
        sa.Column("host", sa.String(255)),
        sa.Column("tags", sa.Text),
        sa.Column("wall_time_s", sa.Float),
        sa.Column("error_type", sa.String(255)),
        sa.Column("error_message", sa.Text),
        sa.Column("last_event_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("run_id", name="pk_runs"),
    )
    op.create_index("ix_runs_name_started_at", "runs", ["name", "started_at"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_monitor_best_value", "runs", ["monitor", "best_value"])

    # One clustered key serves both questions users ask: a run's curve
    # (name = ? AND run_id = ? ORDER BY epoch) and best runs by a metric (name = ?).
    # A single index keeps the recorder's insert rate high.
    op.create_table(
        "epoch_metrics",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("value", sa.Float),
        sa.PrimaryKeyConstraint("name", "run_id", "epoch", name="pk_epoch_metrics"),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "epochs",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("learning_rate", sa.Float),
        sa.Column("wall_time_s", sa.Float),
        sa.Column("steps", sa.Integer),
        sa.Column("samples_per_second", sa.Float),
        sa.Column("steps_per_second", sa.Float),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("run_id", "epoch", name="pk_epochs"),
    )

    op.create_table(
        "checkpoints",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("monitor", sa.String(255)),
        sa.Column("value", sa.Float),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("sha256", sa.String(64)),
        sa.Column("saved_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("run_id", "epoch", "path", name="pk_checkpoints"),
    )

    op.create_table(
        "events",
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_events"),
    )
    op.create_index("ix_events_run_id_seq", "events", ["run_id", "seq"])
    op.create_index("ix_events_type", "events", ["type"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("checkpoints")
    op.drop_table("epochs")
    op.drop_table("epoch_metrics")
    op.drop_index("ix_runs_monitor_best_value", table_name="runs")
    op.drop_index("ix_runs_status", table_name="runs")
    op.drop_index("ix_runs_name_started_at", table_name="runs")
    op.drop_table("runs")
