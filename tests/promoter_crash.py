"""A promoter process that dies (SIGKILL) in the middle of copying a checkpoint into the store.

Run as ``python -m tests.promoter_crash``: it consumes with the real Promoter, but its store
writes half of the model file into the staging folder and then kills the process, leaving
exactly what a crash mid-copy leaves behind.
"""

from __future__ import annotations

import os
import signal
import uuid

from pipeline.bus import EventStream
from pipeline.config import get_settings
from pipeline.consumers.base import ConsumerLoop
from pipeline.consumers.promoter import Promoter
from pipeline.db.session import make_engine
from pipeline.store.fs import MODEL_FILE, STAGING_PREFIX, FsspecModelStore


class DyingStore(FsspecModelStore):
    def put(self, name, version, source, metadata, *, expected_sha256=None, check=None):  # type: ignore[no-untyped-def]
        staging = f"{self.root}/{name}/{STAGING_PREFIX}{uuid.uuid4().hex}"
        self.fs.makedirs(staging, exist_ok=True)
        data = open(source, "rb").read()
        with self.fs.open(f"{staging}/{MODEL_FILE}", "wb") as writer:
            writer.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    settings = get_settings()
    stream = EventStream(settings=settings)
    promoter = Promoter(
        make_engine(settings.database_url), DyingStore(settings.model_store_url), publish=stream.publish
    )
    ConsumerLoop(promoter, stream, consumer_name="doomed-promoter").run()
