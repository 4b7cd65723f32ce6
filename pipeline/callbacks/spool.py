"""An append-only, on-disk spool of encoded events for when Redis is unreachable.

One JSON object per line (the stream-entry fields). Lines are only ever
appended; the sender drains from a read offset and deletes the file once it
has caught up. A spool left behind by a process that died is resent with
``fitstream spool flush`` (consumers are idempotent, so a resend is harmless).

Example:
    >>> import tempfile, pathlib
    >>> spool = DiskSpool(pathlib.Path(tempfile.mkdtemp()) / "run.jsonl")
    >>> spool.append([{"v": "1", "event": "{}"}])
    >>> spool.read(max_items=10)
    ([{'v': '1', 'event': '{}'}], 23)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class DiskSpool:
    """A spool file with a read offset. Not thread-safe: the caller serialises writes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer: Any = None
        self._offset = 0
        self.appended = 0
        self.drained = 0

    def append(self, items: list[dict[str, str]]) -> None:
        if not items:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = open(self.path, "a", encoding="utf-8")
        self._writer.write("".join(json.dumps(item, separators=(",", ":")) + "\n" for item in items))
        self._writer.flush()
        self.appended += len(items)

    def read(self, *, max_items: int) -> tuple[list[dict[str, str]], int]:
        """Up to ``max_items`` complete lines after the read offset, and the offset after them.

        The offset is not advanced until :meth:`commit` is called with it, so a
        failed send leaves the lines to be read again.
        """
        if not self.path.exists():
            return [], self._offset
        items: list[dict[str, str]] = []
        offset = self._offset
        with open(self.path, "rb") as reader:
            reader.seek(offset)
            while len(items) < max_items:
                line = reader.readline()
                if not line.endswith(b"\n"):
                    break  # nothing more, or a line still being written
                offset += len(line)
                try:
                    items.append(json.loads(line))
                except ValueError:
                    continue  # a torn line from a crash: it cannot be sent, skip it
        return items, offset

    def prepend(self, items: list[dict[str, str]]) -> None:
        """Put ``items`` before the unread lines (rewrites the file: used once, when an outage begins)."""
        unread: list[dict[str, str]] = []
        while True:
            chunk, offset = self.read(max_items=10_000)
            if offset == self._offset:
                break
            unread.extend(chunk)
            self._offset = offset
        self.clear()
        self.append(items + unread)

    @property
    def offset(self) -> int:
        return self._offset

    def commit(self, offset: int, count: int) -> None:
        self._offset = offset
        self.drained += count

    def has_unread(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > self._offset

    def unread_count(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as reader:
            reader.seek(self._offset)
            return sum(1 for line in reader if line.endswith(b"\n"))

    def clear(self) -> None:
        """Delete the file once everything in it has been sent."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._offset = 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
