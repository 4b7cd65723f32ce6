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
(:mod:`pipeline.consumers.load_check`), so that the promoter itself never imports TensorFlow.

Example:
    >>> promote_run(engine, open_store("/srv/models"), "3f2c0d…", locks=locks)  # doctest: +SKIP
    Promotion(name='digits-mlp', version=3, champion=True, ...)
"""

from __future__ import annotations

import contextlib
import json
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline import events as ev
from pipeline.consumers.base import default_consumer_name
from pipeline.consumers.load_check import KerasLoadCheck, file_identity
from pipeline.db.bulk import upsert_insert
from pipeline.db.models import SqlModelAlias, SqlModelVersion, SqlPromoterCheckpoint, SqlPromoterRun
from pipeline.db.session import transaction
from pipeline.errors import FitstreamError
from pipeline.lease import LeaseBusyError, RedisLease, held
from pipeline.monitor import Monitor
from pipeline.promotion.candidates import MODEL_CHECKPOINT, Candidate, Ranking, rank_candidates
from pipeline.store import ChecksumMismatchError, ModelStore, StoredVersion, StoreError, VersionTakenError

CHAMPION = "champion"
LATEST = "latest"
#: A promotion lock lives this long without renewal (its holder renews it); others wait up to LOCK_WAIT_S.
LOCK_TTL_S = 30.0
LOCK_WAIT_S = 600.0
#: Version numbers tried when other promotions take them first.
VERSION_ATTEMPTS = 3


class PromotionRefused(FitstreamError):
    """A checkpoint cannot be promoted; the message says why (missing, changed, not loadable by
    Keras, run failed or cancelled, store full or not writable)."""


@dataclass(frozen=True)
class Promotion:
    name: str
    version: int
    champion: bool
    previous_champion: int | None
    previous_value: float | None
    created: bool  # False when this run was already registered (redelivery)
    metric: str | None = None
    value: float | None = None
    mode: str | None = None
    epoch: int | None = None
    source: str | None = None
    champion_reason: str | None = None  # why champion did not move, when not for being worse


class PromotionLocks:
    """One promotion per model name at a time — across promoters and ``fitstream promote`` by hand —
    so that two never pick the same version number (a lease in Redis, next to the stream)."""

    def __init__(self, client: redis.Redis, stream_key: str, *, wait_s: float = LOCK_WAIT_S) -> None:
        self.client = client
        self.stream_key = stream_key
        self.wait_s = wait_s
        self.owner = f"{default_consumer_name()}-{uuid.uuid4().hex[:8]}"

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        lease = RedisLease(
            self.client, f"{self.stream_key}:promoting:{name}", owner=self.owner, ttl_s=LOCK_TTL_S
        )
        try:
            with held(lease, wait_s=self.wait_s):
                yield
        except LeaseBusyError as exc:
            raise PromotionRefused(
                f"another promotion of {name} is still running after {self.wait_s:g} s ({exc}); "
                "promote again later with: fitstream promote RUN"
            ) from None
        except redis.ConnectionError as exc:
            raise PromotionRefused(
                f"cannot reach Redis to take turns with other promotions of {name} ({exc}); "
                "start Redis or check FITSTREAM_REDIS_URL"
            ) from None


def check_keras_file(path: str) -> None:
    """A ``.keras`` file is a zip holding config.json and the weights (checked without TensorFlow)."""
    if path.endswith(".weights.h5"):
        raise PromotionRefused(
            f"{path} holds weights only (save_weights_only=True), not a model that can be loaded"
        )
    if path.endswith(".h5"):
        return  # legacy H5: checked by its sha256 only
    try:
        # The central directory only: the content is verified by sha256 while it is copied,
        # so the file is read once (testzip() would read it all a second time).
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except FileNotFoundError:
        raise PromotionRefused(f"checkpoint missing: {path}") from None
    except zipfile.BadZipFile:
        raise PromotionRefused(f"{path} is not a Keras .keras file (not a zip archive)") from None
    if "config.json" not in names or not any(n.endswith(".weights.h5") or n.endswith(".h5") for n in names):
        raise PromotionRefused(
            f"{path} is not a complete Keras model file (has: {', '.join(sorted(names)) or 'nothing'})"
        )


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
        PromotionRefused: no intact checkpoint, not loadable by Keras, the run failed or was
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
        raise PromotionRefused(f"run {run_id}: no model name known (no run_started/run_queued event seen)")
    if run is not None and run.status in ("failed", *ev.STOPPED_FROM_OUTSIDE) and not force:
        raise PromotionRefused(f"run {run_id} ended {run.status}; promote it anyway with --force")
    if not rows:
        raise PromotionRefused(
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
        raise PromotionRefused(f"run {run_id}: no checkpoint can be ranked: " + "; ".join(ranking.notes))

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


def _registered(engine: Engine, model_name: str, run_id: str) -> Promotion | None:
    """The version this run already has (a redelivered trigger registers nothing new)."""
    table = SqlModelVersion.__table__
    with transaction(engine) as conn:
        existing = conn.execute(
            sa.select(table).where(table.c.name == model_name, table.c.run_id == run_id)
        ).first()
        if existing is None:
            return None
        champion = conn.execute(
            sa.select(SqlModelAlias.version).where(
                SqlModelAlias.name == model_name, SqlModelAlias.alias == CHAMPION
            )
        ).scalar()
    return Promotion(
        model_name,
        existing.version,
        champion == existing.version,
        None,
        None,
        created=False,
        metric=existing.metric,
        value=existing.value,
        mode=existing.mode,
        epoch=existing.epoch,
        source=existing.source,
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
    registered = _registered(engine, model_name, run_id)
    if registered is not None:
        return registered
    notes = list(ranking.notes)
    for chosen, rule in ranking.ranked:
        try:
            check_keras_file(chosen.path)
        except PromotionRefused as exc:
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
        check = _loads_in_keras(chosen.path, load_check) if load_check is not None else None
        try:
            stored, version = _put_new_version(engine, store, model_name, run_id, chosen, metadata, check)
        except ChecksumMismatchError as exc:
            notes.append(f"{chosen.where}: {exc}")
            continue
        return _register(
            engine, model_name, version, stored, chosen, rule, metadata, force=force, aliases=aliases
        )
    raise PromotionRefused(f"run {run_id}: no intact checkpoint to promote: " + "; ".join(notes))


def _put_new_version(
    engine: Engine,
    store: ModelStore,
    model_name: str,
    run_id: str,
    chosen: Candidate,
    metadata: dict[str, Any],
    check: Callable[[], None] | None,
) -> tuple[StoredVersion, int]:
    for attempt in range(VERSION_ATTEMPTS):
        version = _version_for(engine, store, model_name, run_id)
        try:
            return store.put(
                model_name, version, chosen.path, metadata, expected_sha256=chosen.sha256, check=check
            ), version
        except VersionTakenError as exc:
            if attempt == VERSION_ATTEMPTS - 1:
                raise PromotionRefused(
                    f"{exc}; {VERSION_ATTEMPTS} version numbers were taken meanwhile"
                ) from None
        except ChecksumMismatchError:
            raise
        except StoreError as exc:
            raise PromotionRefused(str(exc)) from None
    raise AssertionError("unreachable")


def _champion_verdict(
    champion: Any, chosen: Candidate, rule: Monitor, *, force: bool
) -> tuple[bool, str | None]:
    """(whether the new version becomes champion, why not when it is not for want of being better)."""
    if champion is None or force:
        return True, None
    if (champion.metric, champion.mode) != (rule.metric, rule.mode):
        return False, (
            f"champion v{champion.version} was judged on {champion.metric} ({champion.mode}) and this version on "
            f"{rule.metric} ({rule.mode}): they cannot be compared, so champion stays; move it with "
            "fitstream alias NAME VERSION champion, or promote with --force"
        )
    if chosen.value is None:
        return False, f"this version has no {rule.metric} value to compare with champion v{champion.version}"
    return champion.value is None or rule.is_improvement(chosen.value, champion.value), None


def _register(
    engine: Engine,
    model_name: str,
    version: int,
    stored: StoredVersion,
    chosen: Candidate,
    rule: Monitor,
    metadata: dict[str, Any],
    *,
    force: bool,
    aliases: Sequence[str],
) -> Promotion:
    table, alias_table = SqlModelVersion.__table__, SqlModelAlias.__table__
    with transaction(engine) as conn:
        statement = upsert_insert(conn, table).on_conflict_do_nothing()
        conn.execute(
            statement,
            {
                "name": model_name,
                "version": version,
                "run_id": metadata["run_id"],
                "epoch": chosen.epoch,
                "metric": rule.metric,
                "mode": rule.mode,
                "value": chosen.value,
                "path": stored.uri,
                "sha256": stored.sha256,
                "size_bytes": stored.size_bytes,
                "source_path": chosen.path,
                "spec_hash": metadata["spec_hash"],
                "data_fingerprint": metadata["data_fingerprint"],
                "created_at": datetime.now(timezone.utc),
                "source": metadata["source"],
            },
        )
        champion_row = conn.execute(
            sa.select(table.c.version, table.c.value, table.c.metric, table.c.mode)
            .join(
                alias_table,
                sa.and_(alias_table.c.name == table.c.name, alias_table.c.version == table.c.version),
            )
            .where(alias_table.c.name == model_name, alias_table.c.alias == CHAMPION)
        ).first()
        better, reason = _champion_verdict(champion_row, chosen, rule, force=force)
        moved = [LATEST, *aliases] + ([CHAMPION] if better else [])
        now = datetime.now(timezone.utc)
        upsert = upsert_insert(conn, alias_table)
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=["name", "alias"],
                set_={"version": upsert.excluded.version, "updated_at": upsert.excluded.updated_at},
            ),
            [{"name": model_name, "alias": alias, "version": version, "updated_at": now} for alias in moved],
        )
    return Promotion(
        model_name,
        version,
        better,
        champion_row.version if champion_row else None,
        champion_row.value if champion_row else None,
        created=True,
        metric=rule.metric,
        value=chosen.value,
        mode=rule.mode,
        epoch=chosen.epoch,
        source=metadata["source"],
        champion_reason=reason,
    )


def _version_for(engine: Engine, store: ModelStore, name: str, run_id: str) -> int:
    """The version number for ``run_id``'s model: the one an interrupted promotion of this run left
    in the store without registering it, else the next one free both in SQL and in the store."""
    table = SqlModelVersion.__table__
    with transaction(engine) as conn:
        registered = (
            conn.execute(sa.select(sa.func.max(table.c.version)).where(table.c.name == name)).scalar() or 0
        )
    stored = store.versions(name)
    for version in reversed(stored):
        if version <= registered:
            break
        left = store.get(name, version)
        if left is not None and left.metadata.get("run_id") == run_id:
            return version
    return max([registered, *stored]) + 1


def _loads_in_keras(path: str, load_check: KerasLoadCheck) -> Callable[[], None]:
    """Start loading ``path`` now, unless it was loaded as it is (on its ``checkpoint_saved``);
    the returned check waits for the answer and refuses a file that did not load or changed."""
    pending = load_check.submit(path)
    if pending.identity is None:
        raise PromotionRefused(f"checkpoint missing: {path}")

    def check() -> None:
        problem = load_check.result(pending)
        if problem is not None:
            raise PromotionRefused(f"{path} does not load in Keras with safe_mode=True: {problem}")
        if file_identity(path) != pending.identity:
            raise PromotionRefused(
                f"{path} changed while it was being promoted; promote it again with: fitstream promote RUN"
            )

    return check
