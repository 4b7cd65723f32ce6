"""Options that several commands share."""

from __future__ import annotations

from typing import Any

import click


def shard_option(function: Any) -> Any:
    """``--shard N`` (repeatable): the shards of the stream a consumer process takes; default every one.

    Example:
        >>> @click.command()
        ... @shard_option
        ... def recorder(shards: tuple[int, ...]) -> None:
        ...     print(shards)
        >>> recorder(["--shard", "0", "--shard", "2"], standalone_mode=False)
        (0, 2)
    """
    return click.option(
        "--shard",
        "shards",
        type=click.IntRange(0),
        multiple=True,
        help="Consume only this shard of the stream (repeat for several). Default: every shard (FITSTREAM_STREAM_SHARDS).",
    )(function)
