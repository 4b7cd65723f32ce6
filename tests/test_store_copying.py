"""copy_hashing: one read per byte, the digest of exactly the bytes written, errors raised in the caller."""

from __future__ import annotations

import errno
import hashlib
import io
import os

import pytest

from pipeline.store.copying import copy_hashing, start_writeback


class FailingWriter(io.BytesIO):
    def __init__(self, fail_after: int):
        super().__init__()
        self.fail_after = fail_after

    def write(self, block):
        if self.tell() + len(block) > self.fail_after:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(block)


class CountingReader(io.BytesIO):
    reads = 0

    def read(self, size=-1):
        self.reads += 1
        if self.fail_at is not None and self.reads == self.fail_at:
            raise OSError(errno.EIO, "Input/output error")
        return super().read(size)

    fail_at: int | None = None


def test_copies_every_byte_once_and_hashes_what_it_wrote():
    payload = os.urandom(5 * 1024 + 17)
    reader, writer, seen = CountingReader(payload), io.BytesIO(), []
    sha256, size = copy_hashing(
        reader, writer, chunk_bytes=1024, after_write=lambda offset, length: seen.append((offset, length))
    )
    assert writer.getvalue() == payload and size == len(payload)
    assert sha256 == hashlib.sha256(payload).hexdigest()
    assert reader.reads == 7  # six chunks and the empty read at the end: nothing read twice
    assert [offset for offset, _ in seen] == [0, 1024, 2048, 3072, 4096, 5120] and sum(
        n for _, n in seen
    ) == len(payload)


def test_an_empty_file_copies_to_an_empty_file():
    writer = io.BytesIO()
    assert copy_hashing(io.BytesIO(b""), writer) == (hashlib.sha256(b"").hexdigest(), 0)
    assert writer.getvalue() == b""


def test_a_write_error_is_raised_in_the_caller_without_hanging():
    with pytest.raises(OSError, match="No space left"):
        copy_hashing(io.BytesIO(os.urandom(64 * 1024)), FailingWriter(fail_after=3000), chunk_bytes=1000)


def test_a_read_error_is_raised_in_the_caller():
    reader = CountingReader(os.urandom(10_000))
    reader.fail_at = 3
    with pytest.raises(OSError, match="Input/output error"):
        copy_hashing(reader, io.BytesIO(), chunk_bytes=1000)


def test_writeback_on_a_real_file(tmp_path):
    source, target = tmp_path / "a.bin", tmp_path / "b.bin"
    source.write_bytes(os.urandom(3 << 20))
    with open(source, "rb") as reader, open(target, "wb") as writer:
        sha256, size = copy_hashing(reader, writer, after_write=start_writeback(writer.fileno()))
        os.fsync(writer.fileno())
    assert target.read_bytes() == source.read_bytes() and size == 3 << 20
    assert sha256 == hashlib.sha256(source.read_bytes()).hexdigest()


def test_an_error_while_hashing_stops_every_thread(monkeypatch):
    # The reader may be blocked on a full queue when the hashing side fails (e.g. Ctrl-C): it must not hang.
    import threading

    import pipeline.store.copying as copying

    class ExplodingDigest:
        def __init__(self):
            self.calls = 0

        def update(self, block):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(copying.hashlib, "sha256", ExplodingDigest)
    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        copy_hashing(
            io.BytesIO(os.urandom(64 * 1024)), io.BytesIO(), chunk_bytes=1000
        )  # 65 chunks > queue depth
    assert threading.active_count() == before
