"""Does a checkpoint load in Keras with ``safe_mode=True``? Asked of a helper process.

The promoter never imports TensorFlow (a consumer stays small, starts fast and never touches a
GPU); this module starts one helper process that imports Keras once, with GPUs hidden, at low
priority, and loads checkpoints on request.

The promoter asks as soon as a ``checkpoint_saved`` event arrives (:meth:`KerasLoadCheck.prefetch`),
so the answer is usually ready when EarlyStopping fires ``patience`` epochs later. An answer
holds for the file as it was (device, inode, size, modification time): a checkpoint overwritten
since is loaded again.

Example (an answer is kept per file identity; a file that is not there has none):
    >>> file_identity("/no/such/checkpoint.keras") is None
    True
    >>> checker = KerasLoadCheck(timeout_s=300)
    >>> checker.prefetch("/runs/r1/best.keras")                # on checkpoint_saved  # doctest: +SKIP
    >>> checker.result(checker.submit("/runs/r1/best.keras"))  # None: it loads        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from cachetools import LRUCache

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


_startup_error: str | None = None  # in the helper: why Keras could not be imported, if it could not


def _prepare_helper() -> None:
    """Runs first in the helper: CPU only (a promoter must not take a GPU's memory), few threads and
    low priority (it must not slow a training sharing the machine), quiet logs."""
    global _startup_error
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
    except ImportError as exc:
        _startup_error = (
            f"Keras is not installed where the promoter runs ({exc}); install fitstream with TensorFlow "
            "there, or set FITSTREAM_PROMOTER_LOAD_CHECK=false to check the sha256 and structure only"
        )
    except Exception as exc:  # a broken installation: say so with every answer, rather than crash the helper
        _startup_error = f"Keras could not be imported where the promoter runs: {type(exc).__name__}: {exc}"


class _LoadTimeout(Exception):
    pass


def _on_alarm(_signum: int, _frame: object) -> None:
    raise _LoadTimeout


def _load(path: str, timeout_s: float) -> str | None:
    """In the helper: None if ``path`` loads with ``safe_mode=True``, else the reason. Each load,
    prefetched or awaited, is bounded by ``timeout_s`` (SIGALRM in the helper's main thread)."""
    if _startup_error is not None:
        return _startup_error
    import keras

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        keras.saving.load_model(path, compile=False, safe_mode=True)
    except _LoadTimeout:
        return f"loading took longer than {timeout_s:g} s (FITSTREAM_PROMOTER_LOAD_TIMEOUT_SECONDS)"
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
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
        self._answers: LRUCache[str, PendingLoad] = LRUCache(maxsize=REMEMBERED)

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_prepare_helper,
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
            future = self._executor().submit(_load, path, self.timeout_s)
        except BrokenProcessPool:
            self._replace()
            future = self._executor().submit(_load, path, self.timeout_s)
        pending = PendingLoad(path, identity, future)
        with self._lock:
            self._answers[path] = pending
        return pending

    def result(self, pending: PendingLoad) -> str | None:
        """None if the checkpoint loaded, else why it did not. Only a success is remembered: a
        failure (say, out of memory while a training shared the machine) is tried afresh next time."""
        try:
            answer = self._wait(pending)
        except (BrokenProcessPool, CancelledError):
            # The helper died of something else (killed, out of memory), or a newer load replaced it.
            try:
                pending = self.submit(pending.path)
                answer = self._wait(pending)
            except (BrokenProcessPool, CancelledError):
                self._replace()
                answer = "the Keras process crashed while loading it"
        if answer is not None:
            with self._lock:
                if self._answers.get(pending.path) is pending:
                    del self._answers[pending.path]
        return answer

    def _wait(self, pending: PendingLoad) -> str | None:
        # Each load is bounded in the helper; this bound covers loads queued ahead and a hung helper.
        try:
            return pending.future.result(timeout=self.timeout_s * 2 + 30)
        except FutureTimeout:
            self._replace()
            return f"no answer from the Keras process within {self.timeout_s * 2 + 30:g} s; it was replaced"
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

    def close(self, grace_s: float = 5.0) -> None:
        """Stop the helper: queued loads are dropped; one still running gets ``grace_s``, then is killed."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._answers.clear()
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace_s
        for process in processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(timeout=5)


def configured_load_check(settings: Settings) -> KerasLoadCheck | None:
    """The load check ``FITSTREAM_PROMOTER_LOAD_CHECK`` asks for (None when it is turned off)."""
    if not settings.promoter_load_check:
        log.warning("FITSTREAM_PROMOTER_LOAD_CHECK is off: checkpoints are promoted without a Keras load")
        return None
    return KerasLoadCheck(timeout_s=settings.promoter_load_timeout_seconds)
