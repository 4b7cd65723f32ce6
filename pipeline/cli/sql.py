"""``fitstream sql``: read-only SQL over the training history."""

from __future__ import annotations

import click

from pipeline.cli.output import print_rows
from pipeline.config import get_settings
from pipeline.db.queries import run_sql
from pipeline.db.session import make_engine


@click.command()
@click.argument("query")
@click.option("--json", "fmt", flag_value="json", help="One JSON array of objects.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")
def sql(query: str, fmt: str | None) -> None:
    """Run a read-only QUERY against the history database.

    The database session itself is read-only: writes are refused by the database.

    \b
    Example:
      fitstream sql "SELECT epoch, value FROM epoch_metrics WHERE name = 'val_loss' ORDER BY epoch"
    """
    engine = make_engine(get_settings().database_url, read_only=True)
    try:
        columns, rows = run_sql(engine, query)
    finally:
        engine.dispose()
    print_rows(columns, rows, fmt=fmt or "table")
