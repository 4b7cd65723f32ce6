"""Checkpoints carry their direction and source; sequence numbers of every origin fit.

- ``checkpoints`` and ``promoter_checkpoints`` gain ``mode`` (the saving callback's direction),
  ``source`` (model_checkpoint | early_stopping_restore) and ``batch`` (batch-level checkpoints);
  ``promoter_checkpoints`` also keeps the event's ``seq`` (a newer save of the same file wins).
- ``promoter_runs.monitor_modes``: the directions ``run_started`` reported, for old events.
- ``model_versions.source``.
- ``events.seq`` becomes a BIGINT: the promoter's events are numbered after every attempt's.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("checkpoints", "promoter_checkpoints"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("mode", sa.String(8)))
            batch.add_column(sa.Column("source", sa.String(32)))
            batch.add_column(sa.Column("batch", sa.Integer()))
    with op.batch_alter_table("promoter_checkpoints") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger()))
    with op.batch_alter_table("promoter_runs") as batch:
        batch.add_column(sa.Column("monitor_modes", sa.Text()))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("source", sa.String(32)))
    with op.batch_alter_table("events") as batch:
        batch.alter_column("seq", type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.alter_column("seq", type_=sa.Integer(), existing_type=sa.BigInteger())
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("source")
    with op.batch_alter_table("promoter_runs") as batch:
        batch.drop_column("monitor_modes")
    with op.batch_alter_table("promoter_checkpoints") as batch:
        batch.drop_column("seq")
    for table in ("promoter_checkpoints", "checkpoints"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("batch")
            batch.drop_column("source")
            batch.drop_column("mode")
