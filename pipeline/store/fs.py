"""The model store on any fsspec filesystem: a local directory by default, ``s3://…``,
``gs://…`` or ``memory://…`` by URL (``FITSTREAM_MODEL_STORE``).

Example:
    >>> store = open_store("memory://doc-store")
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras"); _ = open(path, "wb").write(b"weights")
    >>> store.put("digits", 1, path, {"run_id": "r1"}).version
    1
    >>> store.versions("digits")
    [1]
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import fsspec

from pipeline.store.base import METADATA_FILE, MODEL_FILE, ModelStore, StoredVersion, StoreError, check_name

CHUNK = 4 << 20
STAGING_PREFIX = ".staging-"


class FsspecModelStore(ModelStore):
    """A :class:`ModelStore` on an fsspec filesystem.

    Args:
        url: Root of the store, e.g. ``/data/model-store``, ``file:///…``, ``s3://bucket/models``.
        storage_options: Passed to fsspec (credentials, endpoint_url for MinIO, …).
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = self.root.rstrip("/")

    def _dir(self, name: str, version: int) -> str:
        return f"{self.root}/{check_name(name)}/v{int(version)}"

    def put(self, name: str, version: int, source: str, metadata: dict[str, Any], *, expected_sha256: str | None = None) -> StoredVersion:
        final = self._dir(name, version)
        staging = f"{self.root}/{name}/{STAGING_PREFIX}{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        size = 0
        try:
            self.fs.makedirs(staging, exist_ok=True)
            with open(source, "rb") as reader, self.fs.open(f"{staging}/{MODEL_FILE}", "wb") as writer:
                for chunk in iter(lambda: reader.read(CHUNK), b""):
                    digest.update(chunk)
                    writer.write(chunk)
                    size += len(chunk)
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise StoreError(
                    f"checksum mismatch for {source}: the file has sha256 {sha256[:12]}…, the checkpoint event "
                    f"recorded {expected_sha256[:12]}… (the file changed after it was written)"
                )
            full = {**metadata, "name": name, "version": int(version), "sha256": sha256, "size_bytes": size, "file": MODEL_FILE}
            with self.fs.open(f"{staging}/{METADATA_FILE}", "w") as handle:
                handle.write(json.dumps(full, indent=2, sort_keys=True))
            existing = self.get(name, version)
            if existing is not None:
                if existing.sha256 == sha256:
                    return existing
                raise StoreError(f"{name} v{version} already exists with other content (sha256 {existing.sha256[:12]}…)")
            self.fs.mv(staging, final, recursive=True)
        except FileNotFoundError as exc:
            raise StoreError(f"checkpoint file not found: {exc.filename or source}") from None
        except OSError as exc:
            raise StoreError(f"cannot write to the model store {self.url}: {exc.strerror or exc}") from None
        finally:
            if self.fs.exists(staging):
                self.fs.rm(staging, recursive=True)
        stored = self.get(name, version)
        if stored is None:
            raise StoreError(f"{name} v{version} did not appear in {self.url} after the move")
        return stored

    def get(self, name: str, version: int) -> StoredVersion | None:
        folder = self._dir(name, version)
        try:
            with self.fs.open(f"{folder}/{METADATA_FILE}", "r") as handle:
                metadata = json.loads(handle.read())
        except FileNotFoundError:
            return None
        return StoredVersion(
            name=name, version=int(version), uri=self.fs.unstrip_protocol(f"{folder}/{MODEL_FILE}"),
            sha256=metadata["sha256"], size_bytes=int(metadata["size_bytes"]), metadata=metadata,
        )

    def versions(self, name: str) -> list[int]:
        base = f"{self.root}/{check_name(name)}"
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            leaf = entry.rstrip("/").rsplit("/", 1)[-1]
            if leaf.startswith("v") and leaf[1:].isdigit() and self.fs.exists(f"{entry}/{METADATA_FILE}"):
                found.append(int(leaf[1:]))
        return sorted(found)

    def local_copy(self, name: str, version: int, directory: str) -> str:
        stored = self.get(name, version)
        if stored is None:
            raise StoreError(f"{name} v{version} is not in the store {self.url}")
        target = os.path.join(directory, f"{name}-v{version}.keras")
        self.fs.get(f"{self._dir(name, version)}/{MODEL_FILE}", target)
        return target

    def discard_staging(self, name: str) -> int:
        base = f"{self.root}/{check_name(name)}"
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return 0
        stale = [e for e in entries if e.rstrip("/").rsplit("/", 1)[-1].startswith(STAGING_PREFIX)]
        for entry in stale:
            self.fs.rm(entry, recursive=True)
        return len(stale)


def open_store(url: str, **storage_options: Any) -> FsspecModelStore:
    """The store at ``url`` (a path or any fsspec URL)."""
    return FsspecModelStore(url, **storage_options)
