"""The versioned model store (fsspec): immutable version folders, written atomically."""

from pipeline.store.base import ModelStore, StoredVersion, StoreError, VersionTakenError
from pipeline.store.fs import FsspecModelStore, open_store

__all__ = ["FsspecModelStore", "ModelStore", "StoreError", "StoredVersion", "VersionTakenError", "open_store"]
