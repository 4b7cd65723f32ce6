"""``fitstream dead-letters``: list, show, replay and purge the messages consumers set aside."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from pipeline.bus import EventStream
from pipeline.cli.output import print_json, print_rows
from pipeline.config import get_settings
from pipeline.dead_letters import (
    DeadLetter,
    get_dead_letter,
    list_dead_letters,
    parse_duration,
    purge,
    replay,
)

COLUMNS = ["id", "group", "kind", "reason", "event_type", "run_id", "time"]


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


def _row(letter: DeadLetter) -> dict:
    return {
        "id": letter.id,
        "group": letter.group,
        "kind": letter.kind,
        "reason": letter.reason,
        "event_type": letter.event_type,
        "run_id": letter.run_id,
        "event_id": letter.event_id,
        "source_id": letter.source_id,
        "time": _when(letter.at),
    }


@click.group("dead-letters")
def dead_letters() -> None:
    """Messages the consumers could not take, with the reason: look at them, send them back, purge them.

    \b
    Examples:
      fitstream dead-letters list --group recorder
      fitstream dead-letters show 1795664000000-0
      fitstream dead-letters replay --all --group recorder     # once the cause is fixed
      fitstream dead-letters purge --older-than 30d
    """


@dead_letters.command("list")
@click.option("--group", help="Only those of one consumer group (recorder, alerter, promoter).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
def list_command(group: str | None, limit: int, as_json: bool) -> None:
    """The most recent dead letters first."""
    letters = list_dead_letters(EventStream(settings=get_settings()), group=group, limit=limit)
    rows = [_row(letter) for letter in letters]
    if as_json:
        print_json(rows)
        return
    print_rows(COLUMNS, [tuple(r[c] for c in COLUMNS) for r in rows], title="dead letters")


@dead_letters.command()
@click.argument("letter_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, with the original payload.")
def show(letter_id: str, as_json: bool) -> None:
    """One dead letter, with its original payload."""
    letter = get_dead_letter(EventStream(settings=get_settings()), letter_id)
    row = {**_row(letter), "payload": letter.payload}
    if as_json:
        print_json(row)
        return
    for key, value in row.items():
        click.echo(f"{key:>10}: {value}")


@dead_letters.command("replay")
@click.argument("letter_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter (of --group, if given).")
@click.option("--group", help="With --all: only those of this consumer group.")
def replay_command(letter_ids: tuple[str, ...], replay_all: bool, group: str | None) -> None:
    """Put dead letters' original events back on the stream, once each (same event id: consumers keep one)."""
    stream = EventStream(settings=get_settings())
    if replay_all == bool(letter_ids):
        raise click.UsageError("give dead-letter ids, or --all (with --group to narrow it)")
    if group and not replay_all:
        raise click.UsageError("--group goes with --all")
    ids = (
        [letter.id for letter in reversed(list_dead_letters(stream, group=group, limit=1_000_000))]
        if replay_all
        else list(letter_ids)
    )
    new_ids = replay(stream, ids)
    click.echo(f"replayed {len(new_ids)} dead letter(s) onto {stream.base_stream}", err=True)


@dead_letters.command("purge")
@click.option("--older-than", "older_than", required=True, help="A duration: 30m, 12h, 7d, 2w.")
def purge_command(older_than: str) -> None:
    """Delete dead letters older than a duration."""
    stream = EventStream(settings=get_settings())
    removed = purge(stream, older_than_s=parse_duration(older_than))
    click.echo(f"purged {removed} dead letter(s) older than {older_than}", err=True)
