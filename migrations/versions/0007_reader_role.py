"""The read-only role: ``fitstream_reader`` may SELECT Fitstream's tables and nothing else.

Read paths (``fitstream sql``, runs, show, models) connect as it (PostgreSQL only). A migrating
user who may not create roles gets a warning; ``fitstream db grant-reader`` does it later.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

READER_ROLE = "fitstream_reader"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    from pipeline.db.readonly import grant_reader_statements  # the same SQL as `fitstream db grant-reader`

    for statement in grant_reader_statements():
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # The role is shared by every database of the cluster: only this database's grants go.
    op.execute(
        f"""DO $$ BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{READER_ROLE}') THEN
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM {READER_ROLE}', current_schema());
    EXECUTE format('REVOKE SELECT ON ALL TABLES IN SCHEMA %I FROM {READER_ROLE}', current_schema());
  END IF;
END $$"""
    )
