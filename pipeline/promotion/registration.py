"""Registering a stored version in SQL and moving its aliases: ``latest`` and the ones asked for
always, ``champion`` only when :func:`champion_verdict` says the new version beats it (the same
"better" rule as Keras' callbacks, on the champion's own metric and mode). A (model name, run) pair
is registered at most once: :func:`registered_version` finds the version a redelivered trigger already has.

Example:
    >>> from types import SimpleNamespace
    >>> champion = SimpleNamespace(version=2, metric="val_loss", mode="min", value=0.30)  # its SQL row
    >>> chosen = Candidate(epoch=4, path="b.keras", monitor="val_loss", mode="min", value=0.25,
    ...                    sha256="…", seq=9)
    >>> champion_verdict(champion, chosen, Monitor("val_loss", mode="min"), force=False)
    (True, None)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.bulk import upsert_insert
from pipeline.db.models import SqlModelAlias, SqlModelVersion
from pipeline.db.session import transaction
from pipeline.monitor import Monitor
from pipeline.promotion.candidates import Candidate
from pipeline.promotion.outcome import CHAMPION, LATEST, Promotion
from pipeline.store import StoredVersion


def registered_version(engine: Engine, model_name: str, run_id: str) -> Promotion | None:
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


def champion_verdict(
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


def register(
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
    """Register ``version`` of ``model_name`` and move its aliases, in one transaction."""
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
        better, reason = champion_verdict(champion_row, chosen, rule, force=force)
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
