"""``fitstream models``, ``promote``, ``alias``: the model registry."""

from __future__ import annotations

import click

from pipeline.cli.output import print_json, print_rows
from pipeline.config import get_settings
from pipeline.db.registry import describe, list_versions, set_alias
from pipeline.db.session import make_engine
from pipeline.errors import ConfigurationError

LIST_COLUMNS = (
    "name",
    "version",
    "aliases",
    "run_id",
    "epoch",
    "metric",
    "value",
    "size_bytes",
    "created_at",
)
#: Version numbers are SQL integers: 1 to 2³¹ - 1.
MAX_VERSION = 2**31 - 1


def _checked_ref(ref: str) -> str:
    """``ref`` when its version, if it names one, is a version number the registry can hold.

    A selector of digits is a version (``describe`` reads it with ``int``), so "NAME@99999999999"
    or "NAME@²" (a digit to ``str.isdigit``, not to ``int``) would fail in the database or in
    ``int`` instead of saying what is wrong.
    """
    _name, _, selector = ref.partition("@")
    if selector.isdigit() and not (selector.isascii() and 1 <= int(selector) <= MAX_VERSION):
        raise ConfigurationError(
            f"a model version is a number from 1 to {MAX_VERSION}; got {selector!r} in {ref!r}"
        )
    return ref


class _ListUnlessSubcommand(click.Group):
    """A group whose first word is a subcommand (``show``) or else the arguments of ``list``:
    ``fitstream models [NAME]`` lists, ``fitstream models show REF`` shows."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in self.get_help_option_names(ctx)):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ListUnlessSubcommand)
def models() -> None:
    """List model versions: `fitstream models [NAME]`; show one: `fitstream models show NAME[@VERSION|@ALIAS]`.

    \b
    Examples:
      fitstream models digits-mlp
      fitstream models show digits-mlp@champion --json
    """


@models.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="JSON: an array of objects.")
def list_models(name: str | None, as_json: bool) -> None:
    """List the versions of every model, or of model NAME (the default subcommand)."""
    engine = make_engine(get_settings().database_url, read_only=True)
    try:
        rows = list_versions(engine, name)
    finally:
        engine.dispose()
    if as_json:  # aliases stay a list, as `models show --json` gives them
        print_rows(LIST_COLUMNS, [tuple(r[c] for c in LIST_COLUMNS) for r in rows], fmt="json")
        return
    print_rows(
        LIST_COLUMNS,
        [tuple(", ".join(r[c]) if c == "aliases" else r[c] for c in LIST_COLUMNS) for r in rows],
        title="models",
    )


@models.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="JSON: one object.")
def show_model(ref: str, as_json: bool) -> None:
    """Show one model version: REF is NAME, NAME@VERSION or NAME@ALIAS (NAME alone: the latest)."""
    engine = make_engine(get_settings().database_url, read_only=True)
    try:
        info = describe(engine, _checked_ref(ref))
    finally:
        engine.dispose()
    if as_json:
        print_json(info)
        return
    for key, value in info.items():
        click.echo(f"{key:>12}: {', '.join(value) if isinstance(value, list) else value}")


@click.command()
@click.argument("run")
@click.option(
    "--alias", "aliases", multiple=True, help="Also point this alias at the new version (repeatable)."
)
@click.option("--force", is_flag=True, help="Move `champion` even if the version is not better.")
def promote(run: str, aliases: tuple[str, ...], force: bool) -> None:
    """Promote RUN's best checkpoint by hand (the promoter's own code path)."""
    from pipeline.bus import EventStream
    from pipeline.promotion import PromotionLocks, promote_run
    from pipeline.promotion.load_check import configured_load_check
    from pipeline.store import open_store

    settings = get_settings()
    engine = make_engine(settings.database_url)
    stream = EventStream(settings=settings)
    load_check = configured_load_check(settings)
    try:
        result = promote_run(
            engine,
            open_store(settings.model_store_url),
            run,
            aliases=aliases,
            force=force,
            load_check=load_check,
            locks=PromotionLocks(stream.client, stream.base_stream),
        )
    finally:
        engine.dispose()
        if load_check is not None:
            load_check.close()
    state = "registered" if result.created else "already registered"
    click.echo(
        f"{result.name} v{result.version} {state}" + (" and is the champion" if result.champion else ""),
        err=True,
    )


@click.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(1, MAX_VERSION))
@click.argument("alias")
def alias(name: str, version: int, alias: str) -> None:
    """Point ALIAS of model NAME at VERSION."""
    engine = make_engine(get_settings().database_url)
    try:
        set_alias(engine, name, version, alias)
    finally:
        engine.dispose()
    click.echo(f"{name}@{alias} → v{version}", err=True)
