"""``fitstream consume``: run a consumer in its Redis consumer group."""

from __future__ import annotations

import logging

import click

from pipeline.bus import EventStream
from pipeline.cli.options import shard_option
from pipeline.cli.plugins import ConsumeGroup
from pipeline.config import get_settings
from pipeline.consumers.shards import ShardedConsumers
from pipeline.db.session import make_engine

log = logging.getLogger(__name__)


@click.group(cls=ConsumeGroup)
def consume() -> None:
    """Run a consumer (one process per consumer; run several to share the work)."""


@consume.command()
@click.option("--name", "consumer_name", default=None, help="Consumer name in the group (default host-pid).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=None, help="Messages per read.")
@click.option(
    "--claim-idle-ms",
    type=click.IntRange(100),
    default=None,
    help="Reclaim messages idle this long on a dead consumer.",
)
@click.option(
    "--exit-when-idle", type=float, default=None, help="Exit after this many seconds without messages."
)
@shard_option
def recorder(
    consumer_name: str | None,
    batch_size: int | None,
    claim_idle_ms: int | None,
    exit_when_idle: float | None,
    shards: tuple[int, ...],
) -> None:
    """Persist runs, epoch and batch metrics, checkpoints and lifecycle events into SQL."""
    from pipeline.consumers.recorder import Recorder

    settings = get_settings()
    engine = make_engine(settings.database_url)
    loop = ShardedConsumers(
        lambda: Recorder(engine, settings),
        EventStream(settings=settings),
        shards=shards,
        consumer_name=consumer_name,
        batch_size=batch_size,
        claim_idle_ms=claim_idle_ms,
    )
    loop.install_signal_handlers()
    click.echo(f"recorder {loop.consumer_name} consuming {loop.describe()} (group {loop.group})", err=True)
    stats = loop.run(idle_exit_after=exit_when_idle)
    click.echo(
        f"recorder {loop.consumer_name} stopped: {stats.processed} events recorded, "
        f"{stats.dead_lettered} dead-lettered, {stats.reclaimed} reclaimed",
        err=True,
    )


@consume.command()
@click.option("--name", "consumer_name", default=None, help="Consumer name in the group (default host-pid).")
@click.option(
    "--exit-when-idle", type=float, default=None, help="Exit after this many seconds without messages."
)
@shard_option
def promoter(consumer_name: str | None, exit_when_idle: float | None, shards: tuple[int, ...]) -> None:
    """Copy best checkpoints into the model store when EarlyStopping fires; move `champion` if better."""
    from pipeline.consumers.promoter import Promoter
    from pipeline.promotion import PromotionLocks
    from pipeline.promotion.load_check import configured_load_check
    from pipeline.store import open_store

    settings = get_settings()
    stream = EventStream(settings=settings)
    handler = Promoter(
        make_engine(settings.database_url),
        open_store(settings.model_store_url),
        publish=stream.publish,
        load_check=configured_load_check(settings),
        locks=PromotionLocks(stream.client, stream.base_stream),
    )
    # One handler for every shard: promotions are serialized by the global promotion locks.
    loop = ShardedConsumers(lambda: handler, stream, shards=shards, consumer_name=consumer_name)
    loop.install_signal_handlers()
    click.echo(
        f"promoter {loop.consumer_name} consuming {loop.describe()} → {settings.model_store_url}", err=True
    )
    try:
        stats = loop.run(idle_exit_after=exit_when_idle)
    finally:
        if handler.load_check is not None:
            handler.load_check.close()
    click.echo(f"promoter {loop.consumer_name} stopped: {stats.processed} events", err=True)


@consume.command()
@click.option("--name", "consumer_name", default=None, help="Consumer name in the group (default host-pid).")
@click.option(
    "--exit-when-idle", type=float, default=None, help="Exit after this many seconds without messages."
)
@shard_option
def pruner(consumer_name: str | None, exit_when_idle: float | None, shards: tuple[int, ...]) -> None:
    """Stop sweep trials that fall behind their sweep (sweeps with `prune:`); they end `pruned`."""
    from pipeline.consumers.pruner import Pruner
    from pipeline.job_records import JobRecords

    settings = get_settings()
    stream = EventStream(settings=settings)
    engine, jobs = make_engine(settings.database_url), JobRecords(stream.client)
    loop = ShardedConsumers(lambda: Pruner(engine, jobs), stream, shards=shards, consumer_name=consumer_name)
    loop.install_signal_handlers()
    click.echo(f"pruner {loop.consumer_name} consuming {loop.describe()} (group {loop.group})", err=True)
    stats = loop.run(idle_exit_after=exit_when_idle)
    click.echo(f"pruner {loop.consumer_name} stopped: {stats.processed} events", err=True)


@consume.command("all")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=None, help="Messages per read.")
def consume_all(batch_size: int | None) -> None:
    """Run every consumer in this process (today: the recorder, on every shard).

    For production, run each consumer as its own process (and several of each) instead.
    """
    from pipeline.consumers.recorder import Recorder

    settings = get_settings()
    engine = make_engine(settings.database_url)
    loop = ShardedConsumers(
        lambda: Recorder(engine, settings), EventStream(settings=settings), batch_size=batch_size
    )
    loop.install_signal_handlers()
    click.echo(f"consuming {loop.describe()} with: {loop.group}", err=True)
    loop.run()
