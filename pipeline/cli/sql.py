"""``fitstream sql``: read-only SQL over the training history."""

from __future__ import annotations

import click

from pipeline.cli.output import print_rows
from pipeline.config import get_settings
from pipeline.db.queries import run_sql


# A query may begin with an SQL comment ("-- best runs …"): not an option.
@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("query")
@click.option("--json", "fmt", flag_value="json", help="One JSON array of objects.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")
def sql(query: str, fmt: str | None) -> None:
    """Run one read-only QUERY against the history database.

    The database itself refuses anything but reading: on PostgreSQL the query runs as the
    fitstream_reader role, in a READ ONLY transaction, as exactly one SELECT, with a time limit
    (FITSTREAM_SQL_TIMEOUT_SECONDS); on SQLite the file is opened read-only with an authorizer.
    At most FITSTREAM_SQL_MAX_ROWS rows are returned (a notice on stderr says when there were more).

    \b
    Example:
      fitstream sql "SELECT epoch, value FROM epoch_metrics WHERE name = 'val_loss' ORDER BY epoch"
      fitstream sql - --csv < query.sql      # the query from standard input
    """
    if query == "-":
        query = click.get_text_stream("stdin").read()
    settings = get_settings()
    result = run_sql(settings.database_url, query, settings=settings)
    print_rows(result.columns, result.rows, fmt=fmt or "table")
    if result.truncated:
        click.echo(
            f"truncated: only the first {len(result.rows)} rows are shown (FITSTREAM_SQL_MAX_ROWS); "
            "narrow the query or add LIMIT",
            err=True,
        )
