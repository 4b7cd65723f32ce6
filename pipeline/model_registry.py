"""Reading the model registry, and ``load_model("name@champion")``.

A reference names a model, and optionally a version or an alias:

    >>> parse_ref("digits-mlp@champion")
    ('digits-mlp', 'champion')
    >>> parse_ref("digits-mlp@7")
    ('digits-mlp', '7')
    >>> parse_ref("digits-mlp")      # no selector: the latest version (NAME@latest)
    ('digits-mlp', None)
    >>> model = load_model("digits-mlp@champion")      # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.config import get_settings
from pipeline.db.models import SqlModelAlias, SqlModelVersion
from pipeline.db.session import make_engine, transaction
from pipeline.errors import ConfigurationError, RunNotFoundError
from pipeline.store import ChecksumMismatchError, open_store
from pipeline.store.copying import file_sha256

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


def load_model(ref: str, *, settings=None, compile: bool = True):  # type: ignore[no-untyped-def]
    """The Keras model ``ref`` (``name@champion``, ``name@3``, ``name`` = ``name@latest``) from the model store.

    Loaded with ``safe_mode=True``; the file's sha256 is checked against the registry first.

    Raises:
        RunNotFoundError: no such model, version or alias.
        ChecksumMismatchError: the stored file is not the one that was registered (it changed since).
    """
    import keras

    settings = settings or get_settings()
    engine = make_engine(settings.database_url, read_only=True)
    try:
        info = describe(engine, ref)
    finally:
        engine.dispose()
    store = open_store(settings.model_store_url)
    with tempfile.TemporaryDirectory(prefix="fitstream-model-") as directory:
        path = store.local_copy(info["name"], info["version"], directory)
        found = file_sha256(path)
        if found != info["sha256"]:
            raise ChecksumMismatchError(
                f"{ref}: {info['path']} has sha256 {found[:12]}…, but {info['name']} v{info['version']} was "
                f"registered with {info['sha256'][:12]}… (the stored file changed after it was promoted); refusing "
                "to load it. Put the registered file back, or point the alias at another version: "
                f"fitstream alias {info['name']} VERSION ALIAS"
            )
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
