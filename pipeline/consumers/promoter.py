"""The promoter: a consumer of the event stream that remembers each run's checkpoints and, when
EarlyStopping fires (or a run completes with ``promote.on_complete``), promotes the run's best
checkpoint through :func:`pipeline.promotion.promote_run`, announcing ``model_promoted`` or
``promotion_skipped`` on the stream.

It loads each checkpoint that may be promoted (its run's best so far) in the Keras load-check helper
as soon as its ``checkpoint_saved`` arrives, so that the answer is ready when EarlyStopping fires.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from cachetools import LRUCache
from sqlalchemy.engine import Engine

from pipeline import events as ev
from pipeline.consumers.base import Received
from pipeline.db import promoter_state
from pipeline.db.migrate import require_head
from pipeline.db.session import transaction
from pipeline.errors import FitstreamError
from pipeline.monitor import Monitor
from pipeline.promotion import (
    CHAMPION,
    LATEST,
    Promotion,
    PromotionLocks,
    PromotionRefusedError,
    check_keras_file,
    promote_run,
)
from pipeline.promotion.load_check import KerasLoadCheck
from pipeline.store import ModelStore, StoreError

__all__ = [
    "GROUP",
    "Promoter",
    "Promotion",
    "PromotionLocks",
    "PromotionRefusedError",
    "check_keras_file",
    "promote_run",
]

log = logging.getLogger(__name__)


def _promote_settings(event: ev.RunQueued) -> dict[str, Any]:
    """The job's ``promote:`` settings as ``fitstream submit`` validated them. A ``run_queued`` that
    did not come from it (settings of the wrong shape) gets the defaults, and a warning."""
    from pydantic import ValidationError

    from pipeline.jobs import PromoteSettings

    raw = event.spec.get("promote") if isinstance(event.spec, dict) else None
    try:
        return PromoteSettings.model_validate(raw or {}).model_dump()
    except ValidationError as exc:
        log.warning(
            "run %s: its promote settings are not valid (%s); using the defaults",
            event.run_id,
            "; ".join(error["msg"] for error in exc.errors())[:500],
        )
        return PromoteSettings().model_dump()


GROUP = "promoter"
#: A staging copy this old is a leftover of an interrupted promotion, not a copy in progress.
STALE_STAGING_S = 6 * 3600
#: Runs whose best checkpoint value the promoter remembers (the oldest is forgotten first).
BEST_SEEN_RUNS = 10_000


class Promoter:
    """Consumer-group handler: remembers checkpoints, promotes on early stopping (or completion)."""

    group = GROUP
    #: One promoter of the group works at a time (others stand by): two never race for a version number.
    ordered = True

    def __init__(
        self,
        engine: Engine,
        store: ModelStore,
        *,
        publish: Callable[[list[Any]], object] | None = None,
        load_check: KerasLoadCheck | None = None,
        locks: PromotionLocks | None = None,
    ) -> None:
        require_head(engine)
        self.engine = engine
        self.store = store
        self.publish = publish
        self.load_check = load_check
        self.locks = locks
        # run, source, monitor → best value seen (prefetch only improvements), the most recent runs
        self._best_seen: LRUCache[str, float] = LRUCache(maxsize=BEST_SEEN_RUNS)
        if load_check is not None:
            load_check.warm()
        self._discard_stale_copies()

    def handle(self, batch: Sequence[Received]) -> None:
        events = sorted((r.event for r in batch), key=lambda e: (e.run_id, e.seq))
        with transaction(self.engine) as conn:
            for event in events:
                if isinstance(event, ev.RunQueued):
                    promote = _promote_settings(event)
                    promoter_state.remember_run(
                        conn, event.run_id, event.name, json.dumps(promote), spec_hash=_spec_hash(event.spec)
                    )
                elif isinstance(event, ev.RunStarted):
                    promoter_state.remember_run(
                        conn,
                        event.run_id,
                        event.name,
                        None,
                        data_fingerprint=event.data_fingerprint,
                        monitor_modes=_monitor_modes(event),
                    )
                elif isinstance(event, ev.RunFinished):
                    promoter_state.set_run_status(conn, event.run_id, event.status)
                elif isinstance(event, ev.CheckpointSaved):
                    promoter_state.remember_checkpoint(
                        conn,
                        run_id=event.run_id,
                        epoch=event.epoch,
                        path=event.path,
                        monitor=event.monitor,
                        value=event.value,
                        sha256=event.sha256,
                        mode=event.mode,
                        source=event.source,
                        batch=event.batch,
                        seq=event.seq,
                    )
                    self._prefetch(event)
        # Promotions after the facts are committed: a crash in between redoes them on redelivery.
        for event in events:
            if isinstance(event, ev.EarlyStopped):
                settings = self._settings(event.run_id)
                if settings.get("on_early_stop", True):
                    self._promote(event, settings)
            elif isinstance(event, ev.RunFinished) and event.status == "completed":
                settings = self._settings(event.run_id)
                if settings.get("on_complete"):
                    self._promote(event, settings)

    def _discard_stale_copies(self) -> None:
        """Remove what promoters killed mid-copy left behind (they are never visible, but take space)."""
        try:
            removed = sum(
                self.store.discard_staging(name, older_than_s=STALE_STAGING_S) for name in self.store.names()
            )
        except (OSError, StoreError) as exc:
            log.warning("could not clear old partial copies from the model store: %s", exc)
            return
        if removed:
            log.info("removed %d partial copies left in the model store by interrupted promotions", removed)

    def _prefetch(self, event: ev.CheckpointSaved) -> None:
        """Load a checkpoint while training goes on, so the answer is ready when EarlyStopping fires —
        only one that may be promoted: the best so far of its run (every one when it has no value)."""
        if self.load_check is None:
            return
        if event.value is not None:
            try:
                rule = Monitor.from_event(event)
            except FitstreamError:
                rule = None  # direction unknown here: load it anyway
            key = f"{event.run_id}:{event.source}:{event.monitor}"
            best = self._best_seen.get(key)
            if rule is not None and not rule.is_improvement(event.value, best):
                return
            self._best_seen[key] = event.value
        self.load_check.prefetch(event.path)

    def _settings(self, run_id: str) -> dict[str, Any]:
        raw = promoter_state.promotion_settings(self.engine, run_id)
        return json.loads(raw) if raw else {}

    def _promote(self, trigger: ev.EarlyStopped | ev.RunFinished, settings: dict[str, Any]) -> None:
        run_id = trigger.run_id

        def announce(cls: type[ev._Event], outcome: str, **fields: Any) -> None:
            # Announced again on redelivery (a crash may have come between the commit and the first
            # announcement); the stable id and seq make consumers keep one.
            seq = ev.promotion_seq(trigger.seq, outcome)
            self._emit(
                ev.build(cls, run_id=run_id, seq=seq, event_id=ev.stable_event_id(run_id, seq), **fields)
            )

        try:
            result = promote_run(
                self.engine,
                self.store,
                run_id,
                force=bool(settings.get("force")),
                name=settings.get("name"),
                load_check=self.load_check,
                locks=self.locks,
                metric=trigger.monitor,
            )
        except PromotionRefusedError as exc:
            log.warning("run %s not promoted: %s", run_id, exc)
            announce(ev.PromotionSkipped, "promotion_skipped", name=settings.get("name"), reason=str(exc))
            return
        if result.created:
            log.info(
                "run %s promoted as %s v%d%s",
                run_id,
                result.name,
                result.version,
                " (champion)" if result.champion else "",
            )
        announce(
            ev.ModelPromoted,
            "model_promoted",
            name=result.name,
            version=result.version,
            champion=result.champion,
            aliases=[LATEST] + ([CHAMPION] if result.champion else []),
            previous_champion_version=result.previous_champion,
            previous_champion_value=result.previous_value,
            metric=result.metric,
            value=result.value,
            mode=result.mode,
            epoch=result.epoch,
            source=result.source,
            champion_reason=result.champion_reason,
        )
        if result.champion_reason is not None:
            announce(
                ev.PromotionSkipped,
                "champion_kept",
                name=result.name,
                reason=f"champion not moved: {result.champion_reason}",
            )

    def _emit(self, event: ev.Event) -> None:
        if self.publish is not None:
            try:
                self.publish([event])
            except Exception as exc:  # the promotion is committed; the announcement is best effort
                log.warning("could not publish %s: %s", event.type, exc)


def _monitor_modes(event: ev.RunStarted) -> str | None:
    """{monitor: mode} as the run's callbacks decided them (for checkpoint events without a mode)."""
    modes = {c.monitor: c.mode for c in event.callbacks if c.mode in ("min", "max")}
    if event.monitor and event.mode:
        modes.setdefault(event.monitor, event.mode)
    return json.dumps(modes) if modes else None


def _spec_hash(spec: dict[str, Any]) -> str | None:
    import hashlib

    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest() if spec else None
