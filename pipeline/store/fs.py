"""The model store on any fsspec filesystem: a local directory by default, ``s3://…``,
``gs://…`` or ``memory://…`` by URL (``FITSTREAM_MODEL_STORE``).

A version becomes visible in one step, so no reader ever sees a partial copy:

- on a local disk, the copy is written and fsynced in a staging folder, then the folder is
  renamed to ``v<N>`` (a rename refuses to replace an existing version);
- on object stores, the model file is uploaded first and ``metadata.json`` last: a version
  exists only once its metadata does.

Other processes add versions behind this one's back, so on object stores every read asks the
store itself, never a listing the filesystem cached earlier (s3fs and gcsfs keep them forever).

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

import errno
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.store.base import (
    METADATA_FILE,
    MODEL_FILE,
    NAME,
    ChecksumMismatchError,
    ModelStore,
    StoredVersion,
    StoreError,
    VersionTakenError,
    check_name,
)
from pipeline.store.copying import copy_hashing, fsync_directory, start_writeback

STAGING_PREFIX = ".staging-"
#: Free space kept beyond the model's size before a local copy starts.
SPACE_MARGIN_BYTES = 16 << 20
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


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
        self.local = isinstance(self.fs, LocalFileSystem)

    def _dir(self, name: str, version: int) -> str:
        return f"{self.root}/{check_name(name)}/v{int(version)}"

    def _forget(self, path: str) -> str:
        """``path``, with what the filesystem cached about it (and the folders above it) forgotten:
        on an object store, the listing a reader made a minute ago does not hold the versions
        other promoters wrote since (a local disk caches nothing)."""
        if not self.local:
            self.fs.invalidate_cache(path)
        return path

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
        final = self._dir(name, version)
        try:
            reader = _SourceReader(open(source, "rb"))
        except FileNotFoundError:
            raise StoreError(f"checkpoint file not found: {source}") from None
        except OSError as exc:
            raise StoreError(f"cannot read the checkpoint {source}: {exc.strerror or exc}") from None
        with reader:
            incoming = _Incoming(name, int(version), source, reader, metadata, expected_sha256, check)
            try:
                return self._put_local(final, incoming) if self.local else self._put_object(final, incoming)
            except _SourceReadError as exc:
                raise StoreError(f"cannot read the checkpoint {source}: {exc}") from None
            except OSError as exc:
                raise self._write_error(exc, incoming.size) from None

    def _put_local(self, final: str, incoming: _Incoming) -> StoredVersion:
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        free = shutil.disk_usage(parent).free
        if free < incoming.size + SPACE_MARGIN_BYTES:
            raise StoreError(
                f"the model store {self.url} is full: the model needs {_mb(incoming.size)}, {_mb(free)} is free "
                "(free some space or point FITSTREAM_MODEL_STORE elsewhere)"
            )
        staging = os.path.join(parent, f"{STAGING_PREFIX}{uuid.uuid4().hex}")
        os.mkdir(staging)  # the umask's permissions (mkdtemp's 0700 would hide versions from other users)
        try:
            with open(os.path.join(staging, MODEL_FILE), "wb") as writer:
                sha256, copied = copy_hashing(
                    incoming.reader, writer, after_write=start_writeback(writer.fileno())
                )
                os.fsync(writer.fileno())
            metadata = incoming.accept(sha256, copied)
            with open(os.path.join(staging, METADATA_FILE), "w") as handle:
                handle.write(json.dumps(metadata, indent=2, sort_keys=True))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.rename(staging, final)  # refuses to replace a complete version
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                return self._same_or_refuse(incoming, sha256)
            fsync_directory(parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self._get_written(incoming)

    def _put_object(self, final: str, incoming: _Incoming) -> StoredVersion:
        staging = f"{os.path.dirname(final)}/{STAGING_PREFIX}{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(staging, exist_ok=True)
            with self.fs.open(f"{staging}/{MODEL_FILE}", "wb") as writer:
                sha256, copied = copy_hashing(incoming.reader, writer)
            metadata = incoming.accept(sha256, copied)
            if self.fs.exists(self._forget(f"{final}/{METADATA_FILE}")):
                return self._same_or_refuse(incoming, sha256)
            self.fs.makedirs(final, exist_ok=True)
            self.fs.mv(f"{staging}/{MODEL_FILE}", f"{final}/{MODEL_FILE}")
            with self.fs.open(f"{final}/{METADATA_FILE}", "w") as handle:  # last: the version appears
                handle.write(json.dumps(metadata, indent=2, sort_keys=True))
        finally:
            if self.fs.exists(staging):
                self.fs.rm(staging, recursive=True)
        return self._get_written(incoming)

    def _same_or_refuse(self, incoming: _Incoming, sha256: str) -> StoredVersion:
        existing = self._get_written(incoming)
        if existing.sha256 != sha256:
            raise VersionTakenError(
                f"{existing.name} v{existing.version} already exists with other content (sha256 {existing.sha256[:12]}…)"
            )
        return existing

    def _get_written(self, incoming: _Incoming) -> StoredVersion:
        stored = self.get(incoming.name, incoming.version)
        if stored is None:
            raise StoreError(
                f"{incoming.name} v{incoming.version} did not appear in {self.url} after it was written"
            )
        return stored

    def _write_error(self, exc: OSError, size: int) -> StoreError:
        reason = exc.strerror or str(exc)
        if exc.errno in _FULL:
            return StoreError(
                f"the model store {self.url} is full ({reason}) while writing a {_mb(size)} model; "
                "free some space or point FITSTREAM_MODEL_STORE elsewhere"
            )
        if exc.errno in _READ_ONLY or isinstance(exc, PermissionError):
            return StoreError(
                f"the model store {self.url} is not writable ({reason}); check its permissions "
                "or point FITSTREAM_MODEL_STORE elsewhere"
            )
        where = f" ({exc.filename})" if exc.filename else ""
        return StoreError(f"cannot write to the model store {self.url}: {reason}{where}")

    def get(self, name: str, version: int) -> StoredVersion | None:
        folder = self._dir(name, version)
        try:
            with self.fs.open(self._forget(f"{folder}/{METADATA_FILE}"), "r") as handle:
                metadata = json.loads(handle.read())
        except (FileNotFoundError, NotADirectoryError):
            return None
        return StoredVersion(
            name=name,
            version=int(version),
            uri=self.fs.unstrip_protocol(f"{folder}/{MODEL_FILE}"),
            sha256=metadata["sha256"],
            size_bytes=int(metadata["size_bytes"]),
            metadata=metadata,
        )

    def versions(self, name: str) -> list[int]:
        base = f"{self.root}/{check_name(name)}"
        try:
            entries = self.fs.ls(self._forget(base), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            leaf = entry.rstrip("/").rsplit("/", 1)[-1]
            if not (leaf.startswith("v") and leaf[1:].isdigit()):
                continue
            if self.fs.exists(self._forget(f"{entry}/{METADATA_FILE}")):
                found.append(int(leaf[1:]))
        return sorted(found)

    def local_copy(self, name: str, version: int, directory: str) -> str:
        stored = self.get(name, version)
        if stored is None:
            raise StoreError(f"{name} v{version} is not in the store {self.url}")
        target = os.path.join(directory, f"{name}-v{version}.keras")
        self.fs.get(f"{self._dir(name, version)}/{MODEL_FILE}", target)
        return target

    def discard_staging(self, name: str, *, older_than_s: float = 0.0) -> int:
        base = f"{self.root}/{check_name(name)}"
        try:
            entries = self.fs.ls(self._forget(base), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in entries:
            if not entry["name"].rstrip("/").rsplit("/", 1)[-1].startswith(STAGING_PREFIX):
                continue
            if older_than_s > 0 and not self._modified_before(entry, cutoff):
                continue  # maybe a copy in progress (or of unknown age): left alone
            self.fs.rm(entry["name"], recursive=True)
            removed += 1
        return removed

    def _modified_before(self, entry: dict[str, Any], cutoff: float) -> bool:
        """Whether an ``fs.ls(detail=True)`` entry was last changed before ``cutoff`` (False if unknown).

        An object store has no folders, only keys: a staging "folder" has no time of its own, so
        the newest object under it tells its age (else no leftover on S3 would ever be old enough).
        """
        stamp = _stamp(entry)
        if stamp is None and entry.get("type") == "directory" and not self.local:
            stamps = [
                _stamp(found) for found in self.fs.find(self._forget(entry["name"]), detail=True).values()
            ]
            return bool(stamps) and all(s is not None and s < cutoff for s in stamps)
        return stamp is not None and stamp < cutoff

    def names(self) -> list[str]:
        try:
            entries = self.fs.ls(self._forget(self.root), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        leaves = (entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)
        return sorted(leaf for leaf in leaves if NAME.match(leaf))


class _SourceReadError(Exception):
    """Reading the checkpoint failed: the source's fault, not the store's (never an OSError)."""


class _SourceReader:
    """The checkpoint file, with read errors told apart from the store's write errors."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle

    def read(self, size: int) -> bytes:
        try:
            return self.handle.read(size)
        except OSError as exc:
            raise _SourceReadError(exc.strerror or str(exc)) from None

    def fileno(self) -> int:
        return self.handle.fileno()

    def __enter__(self) -> _SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


@dataclass(frozen=True)
class _Incoming:
    """A file on its way into the store, and what it must pass before it becomes visible."""

    name: str
    version: int
    source: str
    reader: _SourceReader
    metadata: dict[str, Any]
    expected_sha256: str | None
    check: Callable[[], None] | None

    @property
    def size(self) -> int:
        return os.fstat(self.reader.fileno()).st_size

    def accept(self, sha256: str, size: int) -> dict[str, Any]:
        """Run the checks on the complete copy; returns the version's metadata."""
        if self.expected_sha256 is not None and sha256 != self.expected_sha256:
            raise ChecksumMismatchError(
                f"checksum mismatch for {self.source}: the file has sha256 {sha256[:12]}…, the checkpoint event "
                f"recorded {self.expected_sha256[:12]}… (the file changed after it was written)"
            )
        if self.check is not None:
            self.check()
        return {
            **self.metadata,
            "name": self.name,
            "version": self.version,
            "sha256": sha256,
            "size_bytes": size,
            "file": MODEL_FILE,
        }


def _stamp(entry: dict[str, Any]) -> float | None:
    """When an ``fs.ls``/``fs.find`` entry was last changed (POSIX seconds), or None if unknown."""
    stamp = entry.get("mtime") or entry.get("created") or entry.get("LastModified")
    if isinstance(stamp, datetime):
        stamp = stamp.timestamp()
    return float(stamp) if isinstance(stamp, (int, float)) else None


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def open_store(url: str, **storage_options: Any) -> FsspecModelStore:
    """The store at ``url`` (a path or any fsspec URL)."""
    return FsspecModelStore(url, **storage_options)
