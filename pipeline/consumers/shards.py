"""Consumers over a sharded stream: one :class:`ConsumerLoop` per shard a process consumes.

With ``FITSTREAM_STREAM_SHARDS=N`` each shard is its own stream key with its own consumer group
per consumer kind. A consumer process takes every shard by default (one loop per shard, each in
its own thread, each with its own handler unless the handler may be shared), or the shards named
with ``--shard`` — the way a deployment gives each shard its own recorders.

Example:
    >>> consumers = ShardedConsumers(lambda: Recorder(engine), EventStream(), shards=[0, 2])  # doctest: +SKIP
    >>> consumers.install_signal_handlers()                                                  # doctest: +SKIP
    >>> consumers.run()                                                                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.bus import EventStream
from pipeline.consumers.base import ConsumerLoop, ConsumerStats, Handler
from pipeline.errors import ConfigurationError
from pipeline.identity import process_identity

log = logging.getLogger(__name__)


class ShardedConsumers:
    """One consumer loop per shard, run together; stopped together by SIGTERM/SIGINT.

    Args:
        make_handler: Called once per shard for its handler (return the same object to share one
            handler; it must then be safe to call from several threads).
        stream: Any shard of the stream (its settings say how many shards there are).
        shards: The shards to consume; default every one.
        consumer_name: The consumer's name in each shard's group (default host-pid).
        **loop_options: Passed to each :class:`ConsumerLoop` (batch_size, claim_idle_ms, …).
    """

    def __init__(
        self,
        make_handler: Callable[[], Handler],
        stream: EventStream,
        *,
        shards: Sequence[int] | None = None,
        consumer_name: str | None = None,
        **loop_options: Any,
    ) -> None:
        chosen = sorted(set(shards)) if shards else list(range(stream.shard_count))
        missing = [s for s in chosen if s >= stream.shard_count]
        if missing:
            raise ConfigurationError(
                f"shard {missing[0]} does not exist: there are {stream.shard_count} shards (0..{stream.shard_count - 1}); "
                "FITSTREAM_STREAM_SHARDS sets how many"
            )
        self.consumer_name = consumer_name or process_identity()
        self.loops = [
            ConsumerLoop(
                make_handler(), stream.for_shard(shard), consumer_name=self.consumer_name, **loop_options
            )
            for shard in chosen
        ]

    @property
    def group(self) -> str:
        return self.loops[0].group

    def describe(self) -> str:
        """What this process consumes, for its start-up line."""
        return ", ".join(loop.stream.stream for loop in self.loops)

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop_event.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: every loop finishes its current batch, then stops."""

        def _stop(signum: int, _frame: object) -> None:
            log.info("%s: signal %d received; stopping after this batch", self.consumer_name, signum)
            self.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self, *, idle_exit_after: float | None = None) -> ConsumerStats:
        """Run every loop until stopped (or idle that long); the stats summed over the shards.
        A loop that fails stops the others and its error is raised."""
        if len(self.loops) == 1:
            return self.loops[0].run(idle_exit_after=idle_exit_after)
        errors: list[BaseException] = []

        def _run(loop: ConsumerLoop) -> None:
            try:
                loop.run(idle_exit_after=idle_exit_after)
            except BaseException as exc:  # re-raised in the caller's thread
                log.exception(
                    "%s: the consumer of %s failed; stopping the others",
                    self.consumer_name,
                    loop.stream.stream,
                )
                errors.append(exc)
                self.stop()

        threads = [
            threading.Thread(target=_run, args=(loop,), name=f"{loop.group}-{loop.stream.shard}")
            for loop in self.loops
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)  # wakes up for signals, which only the main thread receives
        if errors:
            raise errors[0]
        return _summed([loop.stats for loop in self.loops])


def _summed(all_stats: list[ConsumerStats]) -> ConsumerStats:
    total = ConsumerStats(started_at=min(s.started_at for s in all_stats))
    for stats in all_stats:
        for field in dataclasses.fields(ConsumerStats):
            if field.name != "started_at":
                setattr(total, field.name, getattr(total, field.name) + getattr(stats, field.name))
    return total
