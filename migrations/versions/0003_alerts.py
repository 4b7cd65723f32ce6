"""Alerts: per-run facts the alerter needs, rule state, and the alerts outbox.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_runs",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("tags", sa.Text),
        sa.Column("rules", sa.Text),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("last_event_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_alert_runs"),
    )
    op.create_index("ix_alert_runs_status_last_event_at", "alert_runs", ["status", "last_event_at"])
    op.create_table(
        "alert_state",
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("firing", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("rule", "run_id", name="pk_alert_state"),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(400), nullable=False),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sa.UniqueConstraint("idempotency_key", name="uq_alerts_idempotency_key"),
    )
    op.create_index("ix_alerts_status_id", "alerts", ["status", "id"])
    op.create_index("ix_alerts_run_id", "alerts", ["run_id"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("alert_state")
    op.drop_table("alert_runs")
