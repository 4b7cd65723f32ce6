"""Copying a checkpoint into the model store as a new version: which version number it gets
(:func:`version_for`) and the copy itself, retried when another promotion takes the number first
(:func:`put_new_version`). The store verifies the sha256 while it copies and keeps an interrupted
copy invisible (staging folder); the version is registered in SQL afterwards
(:mod:`pipeline.promotion.registration`).

Example:
    >>> stored, version = put_new_version(engine, store, "digits-mlp", run_id, chosen, metadata, check)  # doctest: +SKIP
    >>> version                                                                                          # doctest: +SKIP
    3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.models import SqlModelVersion
from pipeline.db.session import transaction
from pipeline.promotion.candidates import Candidate
from pipeline.promotion.outcome import PromotionRefusedError
from pipeline.store import ChecksumMismatchError, ModelStore, StoredVersion, StoreError, VersionTakenError

#: Version numbers tried when other promotions take them first.
VERSION_ATTEMPTS = 3


def put_new_version(
    engine: Engine,
    store: ModelStore,
    model_name: str,
    run_id: str,
    chosen: Candidate,
    metadata: dict[str, Any],
    check: Callable[[], None] | None,
) -> tuple[StoredVersion, int]:
    for attempt in range(VERSION_ATTEMPTS):
        version = version_for(engine, store, model_name, run_id)
        try:
            return store.put(
                model_name, version, chosen.path, metadata, expected_sha256=chosen.sha256, check=check
            ), version
        except VersionTakenError as exc:
            if attempt == VERSION_ATTEMPTS - 1:
                raise PromotionRefusedError(
                    f"{exc}; {VERSION_ATTEMPTS} version numbers were taken meanwhile"
                ) from None
        except ChecksumMismatchError:
            raise
        except StoreError as exc:
            raise PromotionRefusedError(str(exc)) from None
    raise AssertionError("unreachable")


def version_for(engine: Engine, store: ModelStore, name: str, run_id: str) -> int:
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
