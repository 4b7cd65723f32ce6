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
    from pipeline.db.readonly import READER_ROLE, grant_reader

    url = get_settings().database_url
    engine = make_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            click.echo("SQLite needs no reader role: read paths open the file read-only", err=True)
            return
        exists = grant_reader(engine)
    finally:
        engine.dispose()
    if not exists:
        raise click.ClickException(
            f"could not create the role {READER_ROLE}: connect as a user who may create roles"
        )
    click.echo(f"{mask_url(url)}: {READER_ROLE} may SELECT the history tables", err=True)


@db.command("compact-batch-metrics")
@click.option(
    "--older-than-days",
    type=click.FloatRange(min=0),
    default=None,
    help="Downsample runs quiet for this long. Default: FITSTREAM_BATCH_METRICS_RETENTION_DAYS (30).",
)
@click.option(
    "--bucket-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Steps per bucket. Default: FITSTREAM_BATCH_METRICS_BUCKET_STEPS (100).",
)
@click.option("--json", "as_json", is_flag=True, help="Print {runs, raw_rows_removed, buckets_written}.")
def compact_batch_metrics(older_than_days: float | None, bucket_steps: int | None, as_json: bool) -> None:
    """Replace old runs' raw batch_metrics rows by their downsampled copy (batch_metric_buckets).

    The recorder does this every hour; run it to apply a new retention now.
    """
    import json
    from dataclasses import asdict

    from pipeline.db.batch_retention import compact_batch_metrics as compact
    from pipeline.db.migrate import require_head

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        require_head(engine)
        report = compact(
            engine,
            retention_days=settings.batch_metrics_retention_days
            if older_than_days is None
            else older_than_days,
            bucket_steps=bucket_steps or settings.batch_metrics_bucket_steps,
        )
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(asdict(report)))
    else:
        click.echo(
            f"downsampled {report.runs} runs: {report.raw_rows_removed:,} raw batch rows replaced by "
            f"{report.buckets_written:,} buckets",
            err=True,
        )


@db.command("rebuild-summaries")
@click.option("--json", "as_json", is_flag=True, help="Print {summaries}.")
def rebuild_summaries(as_json: bool) -> None:
    """Recompute metric_summaries (best and last value per run and metric) from epoch_metrics.

    The recorder keeps them current; run this after editing epoch_metrics by hand.
    """
    import json

    from pipeline.db.migrate import require_head
    from pipeline.db.session import transaction
    from pipeline.db.summaries import rebuild

    engine = make_engine(get_settings().database_url)
    try:
        require_head(engine)
        with transaction(engine) as conn:
            count = rebuild(conn)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps({"summaries": count}))
    else:
        click.echo(f"rebuilt {count:,} metric summaries from epoch_metrics", err=True)
