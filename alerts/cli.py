"""``fitstream consume alerter``, ``fitstream alerts list``, ``fitstream alerts test``."""

from __future__ import annotations

import threading
import uuid

import click

from pipeline.bus import EventStream
from pipeline.cli.options import shard_option
from pipeline.cli.output import print_rows
from pipeline.config import get_settings
from pipeline.consumers.shards import ShardedConsumers
from pipeline.db.alert_history import ALERT_COLUMNS
from pipeline.db.alert_history import list_alerts as list_alerts_rows
from pipeline.db.session import make_engine
from pipeline.errors import ConfigurationError


def _rules():  # type: ignore[no-untyped-def]
    from alerts.rules import load_rules

    settings = get_settings()
    if settings.alert_rules is None:
        raise ConfigurationError(
            "no alert rules: set FITSTREAM_ALERT_RULES to the rules file (see README, 'Slack alerts')"
        )
    return load_rules(settings.alert_rules)


@click.command()
@click.option("--name", "consumer_name", default=None, help="Consumer name in the group (default host-pid).")
@click.option(
    "--exit-when-idle", type=float, default=None, help="Exit after this many seconds without messages."
)
@shard_option
def alerter(consumer_name: str | None, exit_when_idle: float | None, shards: tuple[int, ...]) -> None:
    """Evaluate alert rules on the stream and deliver alerts (Slack, webhooks)."""
    from alerts.engine import Alerter, Deliverer, StallWatcher, build_channels

    settings = get_settings()
    rules = _rules()
    channels = build_channels(rules)
    engine = make_engine(settings.database_url)
    handler = Alerter(engine, rules)
    deliverer = Deliverer(engine, channels, retry_budget_s=settings.alert_retry_budget_seconds)
    stall = StallWatcher(handler)
    threads = [
        threading.Thread(target=deliverer.run, name="deliverer", daemon=True),
        threading.Thread(target=stall.run, name="stall", daemon=True),
    ]
    for thread in threads:
        thread.start()
    # One handler for every shard: its rule states live in SQL, per run, and a run is on one shard.
    loop = ShardedConsumers(
        lambda: handler, EventStream(settings=settings), shards=shards, consumer_name=consumer_name
    )
    loop.install_signal_handlers()
    click.echo(
        f"alerter {loop.consumer_name}: {len(rules.rules)} rules, channels {', '.join(channels) or '(none)'}",
        err=True,
    )
    try:
        loop.run(idle_exit_after=exit_when_idle)
    finally:
        # Let the deliverer finish what is pending (bounded), then stop.
        deliverer.stop_event.set()
        stall.stop_event.set()
        for thread in threads:
            thread.join(timeout=15)
    click.echo(f"alerter {loop.consumer_name} stopped: {deliverer.delivered} alerts delivered", err=True)


@click.group()
def alerts() -> None:
    """Alert rules and deliveries."""


@alerts.command("list")
@click.option("--state", type=click.Choice(["firing", "resolved"]), default=None)
@click.option("--status", type=click.Choice(["pending", "delivered", "undelivered"]), default=None)
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
def list_alerts(state: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """Alerts, newest first (rule, run, state, channel, attempts, delivered_at, last_error)."""
    engine = make_engine(get_settings().database_url, read_only=True)
    try:
        rows = list_alerts_rows(engine, state=state, status=status, limit=limit)
    finally:
        engine.dispose()
    print_rows(ALERT_COLUMNS, rows, fmt="json" if as_json else "table", title="alerts")


@alerts.command("test")
@click.argument("channel")
def test_channel(channel: str) -> None:
    """Send a test message to CHANNEL (a name from the rules file)."""
    from alerts.channels.base import AlertMessage, DeliveryError
    from alerts.engine import build_channels

    rules = _rules()
    if channel not in rules.channels:
        raise ConfigurationError(
            f"unknown channel {channel!r}; the rules file defines: {', '.join(rules.channels) or '(none)'}"
        )
    target = build_channels(rules.model_copy(update={"channels": {channel: rules.channels[channel]}}))[
        channel
    ]
    message = AlertMessage(
        key=f"test:{uuid.uuid4().hex}",
        rule="fitstream-test",
        run_id="0" * 32,
        run_name="test message",
        state="firing",
        severity="info",
        summary="This is a test message from `fitstream alerts test`.",
        test=True,
    )
    try:
        target.send(message)
    except DeliveryError as exc:
        raise ConfigurationError(f"channel {channel!r}: delivery failed: {exc}") from None
    click.echo(f"sent a test message to {channel}", err=True)
