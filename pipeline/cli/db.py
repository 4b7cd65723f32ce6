"""``fitstream db``: schema management."""

from __future__ import annotations

import click

from pipeline.config import get_settings
from pipeline.db import migrate
from pipeline.db.session import make_engine, mask_url


@click.group()
def db() -> None:
    """Manage the history database's schema (Alembic)."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade(revision: str) -> None:
    """Create or upgrade the schema at FITSTREAM_DATABASE_URL."""
    url = get_settings().database_url
    reached = migrate.upgrade(url, revision)
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
