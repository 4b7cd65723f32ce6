"""Model store registry: model_versions, model_aliases, and the promoter's own facts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer),
        sa.Column("metric", sa.String(255)),
        sa.Column("mode", sa.String(8)),
        sa.Column("value", sa.Float),
        sa.Column("path", sa.String(2048), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("source_path", sa.String(2048)),
        sa.Column("spec_hash", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="pk_model_versions"),
        sa.UniqueConstraint("name", "run_id", name="uq_model_versions_name_run_id"),
    )
    op.create_table(
        "model_aliases",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", "alias", name="pk_model_aliases"),
    )
    op.create_table(
        "promoter_runs",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("settings", sa.Text),
        sa.Column("spec_hash", sa.String(64)),
        sa.Column("status", sa.String(32)),
        sa.PrimaryKeyConstraint("run_id", name="pk_promoter_runs"),
    )
    op.create_table(
        "promoter_checkpoints",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("path", sa.String(2048), nullable=False),
        sa.Column("monitor", sa.String(255)),
        sa.Column("value", sa.Float),
        sa.Column("sha256", sa.String(64)),
        sa.PrimaryKeyConstraint("run_id", "epoch", "path", name="pk_promoter_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("promoter_checkpoints")
    op.drop_table("promoter_runs")
    op.drop_table("model_aliases")
    op.drop_table("model_versions")
