"""The promotion service: a run's best checkpoint → a new model version, and ``champion`` moved
only when the new version beats it (the same "better" rule as Keras' callbacks).

Called by the promoter consumer on ``early_stopped`` (and ``run_finished`` when the job's
``promote.on_complete`` is set) and by ``fitstream promote RUN``: both go through :func:`promote_run`.
Exactly once: a (model name, run) pair is registered at most once (unique key); a copy interrupted
by a crash is invisible (staging folder) and redone when the trigger is redelivered.

Which checkpoint: the file ModelCheckpoint kept, judged by its own monitor and mode, among the
run's checkpoints whose files are intact; else the model EarlyStopping restored
(:mod:`pipeline.promotion.candidates`). It is checked three ways before its version becomes
visible: its ``.keras`` structure, its sha256 against the ``checkpoint_saved`` event (computed while
it is copied), and a Keras load with ``safe_mode=True`` in a helper process
(:mod:`pipeline.promotion.load_check`), so that the promoter itself never imports TensorFlow.

This module holds the sequence; its steps live beside it: the checks
(:mod:`pipeline.promotion.checkpoint_checks`), the copy under a new version number
(:mod:`pipeline.promotion.versions`), the SQL registration and the champion decision
(:mod:`pipeline.promotion.registration`), the locks (:mod:`pipeline.promotion.locks`) and the
outcome types (:mod:`pipeline.promotion.outcome`).

Example:
    >>> promote_run(engine, open_store("/srv/models"), "3f2c0d…", locks=locks)  # doctest: +SKIP
    Promotion(name='digits-mlp', version=3, champion=True, ...)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline import events as ev
from pipeline.db.models import SqlPromoterCheckpoint, SqlPromoterRun
from pipeline.db.session import transaction
from pipeline.promotion.candidates import MODEL_CHECKPOINT, Candidate, Ranking, rank_candidates
from pipeline.promotion.checkpoint_checks import check_keras_file, loads_in_keras
from pipeline.promotion.load_check import KerasLoadCheck
from pipeline.promotion.locks import LOCK_TTL_S, LOCK_WAIT_S, PromotionLocks
from pipeline.promotion.outcome import CHAMPION, LATEST, Promotion, PromotionRefusedError
from pipeline.promotion.registration import register, registered_version
from pipeline.promotion.versions import VERSION_ATTEMPTS, put_new_version
from pipeline.store import ChecksumMismatchError, ModelStore

# Importers of this module's names before it was split keep importing them from here.
__all__ = [
    "CHAMPION",
    "LATEST",
    "LOCK_TTL_S",
    "LOCK_WAIT_S",
    "VERSION_ATTEMPTS",
    "Promotion",
    "PromotionLocks",
    "PromotionRefusedError",
    "check_keras_file",
    "promote_run",
]


def promote_run(
    engine: Engine,
    store: ModelStore,
    run_id: str,
    *,
    metric: str | None = None,
    force: bool = False,
    aliases: Sequence[str] = (),
    name: str | None = None,
    load_check: KerasLoadCheck | None = None,
    locks: PromotionLocks | None = None,
) -> Promotion:
    """Register ``run_id``'s best checkpoint as a new version and move ``champion`` if it is better.

    "Best" is the file ModelCheckpoint kept, judged by its own monitor and mode, among the run's
    checkpoints whose files are intact (sha256 as recorded); when none is, the model EarlyStopping
    restored (saved at the end of training). ``metric`` picks among several ModelCheckpoints (the
    trigger's monitor). ``champion`` moves only for a version better on the champion's own metric
    and mode; a champion judged on another metric stays (``Promotion.champion_reason`` says why)
    unless ``force``.

    ``load_check`` loads the checkpoint with Keras (``safe_mode=True``) before it becomes
    visible; without one, only its structure and sha256 are checked. ``locks`` make promotions of
    one model name take turns (always pass them where several processes may promote).

    Raises:
        PromotionRefusedError: no intact checkpoint, not loadable by Keras, the run failed or was
            cancelled or pruned (without ``force``), or the store refused (full, not writable).
    """
    with transaction(engine) as conn:
        run = conn.execute(sa.select(SqlPromoterRun.__table__).where(SqlPromoterRun.run_id == run_id)).first()
        rows = conn.execute(
            sa.select(SqlPromoterCheckpoint.__table__)
            .where(SqlPromoterCheckpoint.run_id == run_id)
            .order_by(SqlPromoterCheckpoint.seq, SqlPromoterCheckpoint.epoch)
        ).all()
    model_name = (
        name or (json.loads(run.settings or "{}").get("name") if run else None) or (run.name if run else None)
    )
    if not model_name:
        raise PromotionRefusedError(
            f"run {run_id}: no model name known (no run_started/run_queued event seen)"
        )
    if run is not None and run.status in ("failed", *ev.STOPPED_FROM_OUTSIDE) and not force:
        raise PromotionRefusedError(f"run {run_id} ended {run.status}; promote it anyway with --force")
    if not rows:
        raise PromotionRefusedError(
            f"run {run_id}: no checkpoint was recorded (add a ModelCheckpoint, or keep EarlyStopping's "
            "restore_best_weights so that the restored model is saved at the end of training)"
        )
    known_modes = json.loads(run.monitor_modes) if run is not None and run.monitor_modes else {}
    ranking = rank_candidates(
        (
            Candidate(
                epoch=r.epoch,
                path=r.path,
                monitor=r.monitor,
                mode=r.mode,
                value=r.value,
                sha256=r.sha256,
                seq=r.seq,
                source=r.source,
                batch=r.batch,
            )
            for r in rows
        ),
        known_modes=known_modes,
        prefer_monitor=metric,
    )
    if not ranking.ranked:
        raise PromotionRefusedError(f"run {run_id}: no checkpoint can be ranked: " + "; ".join(ranking.notes))

    with (
        locks(model_name) if locks is not None else contextlib.nullcontext()
    ):  # the version is picked and taken under it
        return _store_and_register(
            engine,
            store,
            run=run,
            run_id=run_id,
            model_name=model_name,
            ranking=ranking,
            force=force,
            aliases=aliases,
            load_check=load_check,
        )


def _store_and_register(
    engine: Engine,
    store: ModelStore,
    *,
    run: Any,
    run_id: str,
    model_name: str,
    ranking: Ranking,
    force: bool,
    aliases: Sequence[str],
    load_check: KerasLoadCheck | None,
) -> Promotion:
    """Copy the best intact candidate into the store as a new version of ``model_name``, register it,
    move the aliases."""
    registered = registered_version(engine, model_name, run_id)
    if registered is not None:
        return registered
    notes = list(ranking.notes)
    for chosen, rule in ranking.ranked:
        try:
            check_keras_file(chosen.path)
        except PromotionRefusedError as exc:
            notes.append(f"{chosen.where}: {exc}")
            continue
        if chosen.sha256 is None:
            notes.append(f"{chosen.where}: its sha256 was not recorded, so it cannot be checked")
            continue
        metadata = {
            "run_id": run_id,
            "epoch": chosen.epoch,
            "batch": chosen.batch,
            "metric": rule.metric,
            "mode": rule.mode,
            "value": chosen.value,
            "source": chosen.source or MODEL_CHECKPOINT,
            "source_path": chosen.path,
            "spec_hash": run.spec_hash if run else None,
            "data_fingerprint": run.data_fingerprint if run else None,
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        check = loads_in_keras(chosen.path, load_check) if load_check is not None else None
        try:
            stored, version = put_new_version(engine, store, model_name, run_id, chosen, metadata, check)
        except ChecksumMismatchError as exc:
            notes.append(f"{chosen.where}: {exc}")
            continue
        return register(
            engine, model_name, version, stored, chosen, rule, metadata, force=force, aliases=aliases
        )
    raise PromotionRefusedError(f"run {run_id}: no intact checkpoint to promote: " + "; ".join(notes))
