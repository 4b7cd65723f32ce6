"""``fitstream spool``: events a training process could not send before it ended."""

from __future__ import annotations

import click

from pipeline.bus import EventStream
from pipeline.callbacks.spool import DiskSpool
from pipeline.config import get_settings


@click.group()
def spool() -> None:
    """Inspect or resend spooled events (left when Redis was unreachable at the end of a run)."""


@spool.command("list")
def list_spool() -> None:
    """List spool files and how many events each holds."""
    directory = get_settings().spool_dir
    files = sorted(directory.glob("*.jsonl")) if directory.exists() else []
    if not files:
        click.echo(f"no spooled events in {directory}", err=True)
    for path in files:
        click.echo(f"{path}\t{DiskSpool(path).unread_count()} events")


@spool.command()
def flush() -> None:
    """Send every spool file's events to the stream, in order, and delete the files sent."""
    settings = get_settings()
    directory = settings.spool_dir
    stream = EventStream(settings=settings)
    total = 0
    for path in sorted(directory.glob("*.jsonl")) if directory.exists() else []:
        spool_file = DiskSpool(path)
        while True:
            items, offset = spool_file.read(max_items=1000)
            if offset == spool_file.offset:
                break
            if items:
                stream.publish(items)
            spool_file.commit(offset, len(items))
            total += len(items)
        spool_file.clear()
    click.echo(f"sent {total} spooled events to {settings.stream}", err=True)
