"""The model registry's SQL: versions, aliases, and what a run registered (read and alias moves).

The promoter's own writes (registering a version, moving ``latest``/``champion``) are in
:mod:`pipeline.promotion.registration`; everything else that reads or points the registry goes
through here, returning plain dicts (the ``--json`` objects of ``fitstream models``).

Example:
    >>> engine = make_engine("sqlite:///fitstream.db", read_only=True)  # doctest: +SKIP
    >>> describe(engine, "digits-mlp@champion")["version"]                # doctest: +SKIP
    3
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.models import SqlModelAlias, SqlModelVersion
from pipeline.db.session import transaction
from pipeline.errors import ConfigurationError, RunNotFoundError

FIELDS = (
    "name",
    "version",
    "run_id",
    "epoch",
    "metric",
    "mode",
    "value",
    "source",
    "path",
    "sha256",
    "size_bytes",
    "source_path",
    "spec_hash",
    "data_fingerprint",
    "created_at",
)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name``, ``name@3`` or ``name@champion`` → (name, version-or-alias)."""
    name, _, selector = ref.partition("@")
    if not name:
        raise ConfigurationError(
            f"a model reference looks like NAME, NAME@VERSION or NAME@ALIAS; got {ref!r}"
        )
    return name, selector or None


def describe(engine: Engine, ref: str) -> dict[str, Any]:
    """The version ``ref`` points at, with its aliases (``latest`` when no selector is given)."""
    name, selector = parse_ref(ref)
    versions, aliases = SqlModelVersion.__table__, SqlModelAlias.__table__
    with transaction(engine) as conn:
        if selector is None or not selector.isdigit():
            alias = selector or "latest"
            version = conn.execute(
                sa.select(aliases.c.version).where(aliases.c.name == name, aliases.c.alias == alias)
            ).scalar()
            if version is None:
                known = conn.execute(sa.select(aliases.c.alias).where(aliases.c.name == name)).scalars().all()
                raise RunNotFoundError(
                    f"model {name!r} has no alias {alias!r}"
                    + (
                        f"; aliases: {', '.join(sorted(known))}"
                        if known
                        else "; list models with: fitstream models"
                    )
                )
        else:
            version = int(selector)
        row = conn.execute(
            sa.select(*(versions.c[f] for f in FIELDS)).where(
                versions.c.name == name, versions.c.version == version
            )
        ).first()
        if row is None:
            raise RunNotFoundError(
                f"model {name!r} has no version {version}; list them with: fitstream models {name}"
            )
        names = (
            conn.execute(
                sa.select(aliases.c.alias).where(aliases.c.name == name, aliases.c.version == version)
            )
            .scalars()
            .all()
        )
    return {**dict(row._mapping), "aliases": sorted(names)}


def list_versions(engine: Engine, name: str | None = None) -> list[dict[str, Any]]:
    versions, aliases = SqlModelVersion.__table__, SqlModelAlias.__table__
    query = sa.select(*(versions.c[f] for f in FIELDS)).order_by(versions.c.name, versions.c.version)
    if name:
        query = query.where(versions.c.name == name)
    with transaction(engine) as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
        alias_rows = conn.execute(sa.select(aliases.c.name, aliases.c.version, aliases.c.alias)).all()
    by_version: dict[tuple[str, int], list[str]] = {}
    for a in alias_rows:
        by_version.setdefault((a.name, a.version), []).append(a.alias)
    return [{**r, "aliases": sorted(by_version.get((r["name"], r["version"]), []))} for r in rows]


def set_alias(engine: Engine, name: str, version: int, alias: str) -> None:
    """Point ``alias`` of model ``name`` at ``version`` (``fitstream alias``).

    Raises:
        RunNotFoundError: the model has no such version.
    """
    table = SqlModelAlias.__table__
    with transaction(engine) as conn:
        exists = conn.execute(
            sa.select(SqlModelVersion.version).where(
                SqlModelVersion.name == name, SqlModelVersion.version == version
            )
        ).first()
        if exists is None:
            raise RunNotFoundError(
                f"model {name!r} has no version {version}; list them with: fitstream models {name}"
            )
        conn.execute(table.delete().where(table.c.name == name, table.c.alias == alias))
        conn.execute(
            table.insert().values(
                name=name, alias=alias, version=version, updated_at=datetime.now(timezone.utc)
            )
        )


def version_of_run(engine: Engine, run_id: str) -> dict[str, Any] | None:
    """``{"name", "version"}`` of the model version registered from ``run_id``, or None."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(SqlModelVersion.name, SqlModelVersion.version).where(SqlModelVersion.run_id == run_id)
        ).first()
    return None if row is None else {"name": row.name, "version": row.version}
