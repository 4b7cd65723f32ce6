"""Experiments: each run's parameters (``params``), sweeps (``sweeps``, ``runs.sweep_id``), why a run
was cancelled or pruned (``runs.status_reason``), the pruner's own tables, and the ``run_summary`` view.

``run_summary`` is one row per run with its parameters as one JSON object. A later migration that
rebuilds ``runs`` or ``params`` drops the view first and creates it again after.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: The parameters as one JSON object, numbers as numbers, in each dialect's own JSON functions.
PARAMS_JSON = {
    "sqlite": "(SELECT json_group_object(p.key, CASE WHEN p.value_num IS NOT NULL THEN p.value_num ELSE p.value END) "
    "FROM params p WHERE p.run_id = r.run_id)",
    "postgresql": "(SELECT coalesce(json_object_agg(p.key, CASE WHEN p.value_num IS NOT NULL THEN to_json(p.value_num) "
    "ELSE to_json(p.value) END ORDER BY p.key), '{}'::json) FROM params p WHERE p.run_id = r.run_id)",
}


def run_summary_sql(dialect: str) -> str:
    return f"""CREATE VIEW run_summary AS
SELECT r.run_id, r.name, r.status, r.status_reason, r.sweep_id,
       r.epochs_completed AS epochs, r.epochs_planned, r.monitor, r.mode, r.best_value, r.best_epoch,
       r.stopped_epoch, r.wall_time_s AS duration_s, r.batch_size, r.queued_at, r.started_at, r.finished_at,
       r.tags, {PARAMS_JSON[dialect]} AS params
FROM runs r"""


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(64)))
        batch.add_column(sa.Column("status_reason", sa.Text()))
        batch.create_index("ix_runs_sweep_id", ["sweep_id"])
    op.create_table(
        "params",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("value", sa.Text()),
        sa.Column("value_num", sa.Float()),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_params"),
    )
    op.create_index("ix_params_key_value_num", "params", ["key", "value_num"])
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("spec", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("trials", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
    )
    op.create_table(
        "pruner_trials",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("sweep_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("warmup_epochs", sa.Integer(), nullable=False),
        sa.Column("min_trials", sa.Integer(), nullable=False),
        sa.Column("monitor", sa.String(255)),
        sa.Column("mode", sa.String(8)),
        sa.PrimaryKeyConstraint("run_id", name="pk_pruner_trials"),
    )
    op.create_index("ix_pruner_trials_sweep_id_status", "pruner_trials", ["sweep_id", "status"])
    op.create_table(
        "pruner_values",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.String(64), nullable=False),
        sa.Column("value", sa.Float()),
        sa.PrimaryKeyConstraint("run_id", "epoch", name="pk_pruner_values"),
    )
    op.create_index("ix_pruner_values_sweep_id_epoch", "pruner_values", ["sweep_id", "epoch"])
    op.execute(run_summary_sql(op.get_bind().dialect.name))


def downgrade() -> None:
    op.execute("DROP VIEW run_summary")
    op.drop_table("pruner_values")
    op.drop_table("pruner_trials")
    op.drop_table("sweeps")
    op.drop_index("ix_params_key_value_num", table_name="params")
    op.drop_table("params")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_sweep_id")
        batch.drop_column("status_reason")
        batch.drop_column("sweep_id")
