"""``fitstream db``: schema management."""

from __future__ import annotations

import click

from pipeline.config import get_settings
from pipeline.db import migrate
from pipeline.db.session import make_engine, mask_url
from pipeline.errors import ConfigurationError


@click.group()
def db() -> None:
    """Manage the history database's schema (Alembic)."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade(revision: str) -> None:
    """Create or upgrade the schema at FITSTREAM_DATABASE_URL."""
    from alembic.util import CommandError

    url = get_settings().database_url
    try:
        reached = migrate.upgrade(url, revision)
    except CommandError as exc:  # an unknown or ambiguous revision: say so, in one line
        raise ConfigurationError(f"--revision {revision!r}: {exc}; see: fitstream db current") from None
    click.echo(f"{mask_url(url)}: schema at revision {reached}", err=True)


@db.command()
def current() -> None:
    """Print the schema revision of the database and the one this Fitstream needs."""
    url = get_settings().database_url
    engine = make_engine(url)
    try:
        click.echo(f"current: {migrate.current_revision(engine) or '(none)'}")
        click.echo(f"head:    {migrate.head_revision()}")
    finally:
        engine.dispose()


@db.command("grant-reader")
def grant_reader() -> None:
    """Create the fitstream_reader role (PostgreSQL) and let it SELECT the history tables.

    Read paths connect as it. Run this as a user who may create roles when the migrating user may
    not; give the role a password (ALTER ROLE fitstream_reader PASSWORD '…') where the server asks
    for one, and set FITSTREAM_READER_DATABASE_URL accordingly.
    """
    import sqlalchemy as sa

    from pipeline.db.readonly import READER_ROLE, grant_reader_statements

    url = get_settings().database_url
    engine = make_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            click.echo("SQLite needs no reader role: read paths open the file read-only", err=True)
            return
        with engine.begin() as conn:
            for statement in grant_reader_statements():
                conn.exec_driver_sql(statement)
            exists = conn.execute(sa.text("SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = :r"), {"r": READER_ROLE}).scalar()
    finally:
        engine.dispose()
    if not exists:
        raise click.ClickException(f"could not create the role {READER_ROLE}: connect as a user who may create roles")
    click.echo(f"{mask_url(url)}: {READER_ROLE} may SELECT the history tables", err=True)
