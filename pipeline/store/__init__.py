"""The versioned model store (fsspec): immutable version folders, written atomically."""

from pipeline.store.base import (
    ChecksumMismatchError,
    ModelStore,
    StoredVersion,
    StoreError,
    VersionTakenError,
)
from pipeline.store.fs import FsspecModelStore, open_store

__all__ = [
    "ChecksumMismatchError",
    "FsspecModelStore",
    "ModelStore",
    "StoreError",
    "StoredVersion",
    "VersionTakenError",
    "open_store",
]
