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

from pipeline.config import get_settings
from pipeline.db.registry import FIELDS, describe, list_versions, parse_ref
from pipeline.db.session import make_engine
from pipeline.store import ChecksumMismatchError, open_store
from pipeline.store.copying import file_sha256

# The registry's reads live in pipeline.db.registry; this module is their public face.
__all__ = ["FIELDS", "describe", "list_versions", "load_model", "parse_ref"]


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
