"""Does a checkpoint load in Keras with ``safe_mode=True``? Asked of a helper process.

The promoter never imports TensorFlow (a consumer stays small, starts fast and never touches a
GPU); this module starts one helper process that imports Keras once, with GPUs hidden, at low
priority, and loads checkpoints on request.

The promoter asks as soon as a ``checkpoint_saved`` event arrives (:meth:`KerasLoadCheck.prefetch`),
so the answer is usually ready when EarlyStopping fires ``patience`` epochs later. An answer
holds for the file as it was (device, inode, size, modification time): a checkpoint overwritten
since is loaded again.

Example:
    >>> checker = KerasLoadCheck(timeout_s=300)
    >>> checker.prefetch("/runs/r1/best.keras")                # on checkpoint_saved  # doctest: +SKIP
    >>> checker.result(checker.submit("/runs/r1/best.keras"))  # None: it loads        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections import OrderedDict
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from pipeline.config import Settings

log = logging.getLogger(__name__)


#: Answers kept, one per checkpoint path (most recent first out).
REMEMBERED = 256

FileIdentity = tuple[int, int, int, int]


def file_identity(path: str) -> FileIdentity | None:
    """(device, inode, size, mtime in ns) of ``path``, or None when it does not exist."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _prepare_helper() -> None:
    """Runs first in the helper: CPU only (a promoter must not take a GPU's memory), few threads and
    low priority (it must not slow a training sharing the machine), quiet logs."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    try:
        os.nice(10)
    except OSError:
        pass
    try:
        import keras  # noqa: F401  (imported once, while the promoter waits for events)
    except ImportError:
        pass  # reported by _load, with what to do


def _load(path: str) -> str | None:
    """In the helper: None if ``path`` loads with ``safe_mode=True``, else the reason."""
    try:
        import keras
    except ImportError as exc:
        return (f"Keras is not installed where the promoter runs ({exc}); install fitstream with TensorFlow "
                "there, or set FITSTREAM_PROMOTER_LOAD_CHECK=false to check the sha256 and structure only")
    try:
        keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
    return None


def _ready() -> bool:
    return True


@dataclass
class PendingLoad:
    """A load of ``path`` as it was when asked (``identity``)."""

    path: str
    identity: FileIdentity | None
    future: Future[str | None]


class KerasLoadCheck:
    """Loads checkpoints with ``keras.saving.load_model(path, safe_mode=True)`` in one helper process.

    Args:
        timeout_s: A load that takes longer is refused, and the helper is replaced.
    """

    def __init__(self, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, PendingLoad] = OrderedDict()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_prepare_helper,
                )
            return self._pool

    def warm(self) -> None:
        """Start the helper (and its Keras import) now, rather than at the first promotion."""
        self._executor().submit(_ready)

    def prefetch(self, path: str) -> None:
        """Start loading ``path`` in the background unless it is already loaded as it is now.
        Never raises: a failure here is met again, and reported, when the checkpoint is promoted."""
        try:
            self.submit(path)
        except Exception as exc:
            log.warning("could not start loading %s ahead of its promotion: %s", path, exc)

    def submit(self, path: str) -> PendingLoad:
        """The load of ``path`` as it is now: a remembered one, or a new one; see :meth:`result`."""
        identity = file_identity(path)
        with self._lock:
            known = self._answers.get(path)
        if known is not None and known.identity == identity and not known.future.cancelled():
            return known
        if known is not None:
            known.future.cancel()  # a superseded checkpoint still waiting: never load it
        try:
            future = self._executor().submit(_load, path)
        except BrokenProcessPool:
            self._replace()
            future = self._executor().submit(_load, path)
        pending = PendingLoad(path, identity, future)
        with self._lock:
            self._answers[path] = pending
            self._answers.move_to_end(path)
            while len(self._answers) > REMEMBERED:
                self._answers.popitem(last=False)
        return pending

    def result(self, pending: PendingLoad) -> str | None:
        """None if the checkpoint loaded, else why it did not."""
        try:
            return self._wait(pending)
        except (BrokenProcessPool, CancelledError):
            pass  # the helper died of something else (killed, out of memory), or a newer load replaced it
        try:
            return self._wait(self.submit(pending.path))
        except (BrokenProcessPool, CancelledError):
            self._replace()
            return "the Keras process crashed while loading it"

    def _wait(self, pending: PendingLoad) -> str | None:
        try:
            return pending.future.result(timeout=self.timeout_s)
        except FutureTimeout:
            self._replace()
            return f"loading took longer than {self.timeout_s:g} s (FITSTREAM_PROMOTER_LOAD_TIMEOUT_SECONDS)"
        except BrokenProcessPool:
            self._replace()
            raise

    def check(self, path: str) -> str | None:
        """Load ``path`` and wait: None if it loads, else why not."""
        return self.result(self.submit(path))

    def _replace(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._answers.clear()
        if pool is not None:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()  # a hung load would otherwise outlive the refusal
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._answers.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def configured_load_check(settings: Settings) -> KerasLoadCheck | None:
    """The load check ``FITSTREAM_PROMOTER_LOAD_CHECK`` asks for (None when it is turned off)."""
    if not settings.promoter_load_check:
        log.warning("FITSTREAM_PROMOTER_LOAD_CHECK is off: checkpoints are promoted without a Keras load")
        return None
    return KerasLoadCheck(timeout_s=settings.promoter_load_timeout_seconds)
