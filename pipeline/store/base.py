"""What a model store does, whatever holds the bytes.

Layout: ``<root>/<name>/v<N>/`` holds ``model.keras`` and ``metadata.json``; a version
folder appears only complete (written under a staging name, then moved) and is never
changed afterwards. Which version an alias (``champion``, ``latest``…) points at is
recorded in SQL by the promoter, not here.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import FitstreamError

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class StoreError(FitstreamError):
    """The store refused or failed an operation; the message says why (not writable, full,
    a version that exists with other content, a checksum that does not match)."""


class ChecksumMismatchError(StoreError):
    """The file's sha256 is not the one its checkpoint event recorded: it changed after it was written."""


class VersionTakenError(StoreError):
    """The version number is already taken by other content (another promotion got there first)."""


@dataclass(frozen=True)
class StoredVersion:
    name: str
    version: int
    uri: str  # the model file
    sha256: str
    size_bytes: int
    metadata: dict[str, Any] = field(default_factory=dict)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise StoreError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' (at most 200)")
    return name


class ModelStore(abc.ABC):
    """Versioned, immutable model files. Every backend passes ``tests/test_model_store.py``."""

    @abc.abstractmethod
    def put(
        self,
        name: str,
        version: int,
        source: str,
        metadata: dict[str, Any],
        *,
        expected_sha256: str | None = None,
        check: Callable[[], None] | None = None,
    ) -> StoredVersion:
        """Copy the local file ``source`` in as ``name`` version ``version``, atomically.

        Hashes while copying (the file is read once). ``check`` runs once the copy is complete
        and its sha256 matches, before the version becomes visible; whatever it raises aborts
        the put and leaves nothing behind. Idempotent: putting the same content again returns
        the existing version.

        Raises:
            StoreError: ``expected_sha256`` does not match, the version exists with other
                content, or the store is full or not writable.
        """

    @abc.abstractmethod
    def get(self, name: str, version: int) -> StoredVersion | None:
        """The complete version, or None (a partial copy is never returned)."""

    @abc.abstractmethod
    def versions(self, name: str) -> list[int]:
        """Complete versions of ``name``, ascending."""

    @abc.abstractmethod
    def local_copy(self, name: str, version: int, directory: str) -> str:
        """Download the model file into ``directory`` (for Keras to load) and return its path."""

    @abc.abstractmethod
    def discard_staging(self, name: str, *, older_than_s: float = 0.0) -> int:
        """Remove leftovers of interrupted copies of ``name`` (only those older than
        ``older_than_s``: a younger one may be a copy in progress); returns how many."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """The model names that have a folder in the store."""
