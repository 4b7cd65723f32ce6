"""Does a checkpoint load in Keras with ``safe_mode=True``? Asked of a helper process.

The promoter never imports TensorFlow (a consumer stays small, starts fast and never touches a
GPU); this module starts one helper process that imports Keras once, with GPUs hidden, and
loads checkpoints on request. The promoter hands it a checkpoint while it copies the same file
into the store, so the load costs little extra time.

Example:
    >>> checker = KerasLoadCheck(timeout_s=300)
    >>> pending = checker.submit("/runs/r1/best.keras")    # doctest: +SKIP
    >>> checker.result(pending)    # None when it loads, else why not    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

from pipeline.config import Settings

log = logging.getLogger(__name__)


def _prepare_helper() -> None:
    """Runs first in the helper: CPU only (a promoter must not take a GPU's memory), quiet logs."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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


class KerasLoadCheck:
    """Loads checkpoints with ``keras.saving.load_model(path, safe_mode=True)`` in one helper process.

    Args:
        timeout_s: A load that takes longer is refused, and the helper is replaced.
    """

    def __init__(self, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

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

    def submit(self, path: str) -> Future[str | None]:
        """Start loading ``path``; pass the result to :meth:`result`."""
        try:
            return self._executor().submit(_load, path)
        except BrokenProcessPool:
            self._replace()
            return self._executor().submit(_load, path)

    def result(self, pending: Future[str | None]) -> str | None:
        """None if the checkpoint loaded, else why it did not."""
        try:
            return pending.result(timeout=self.timeout_s)
        except FutureTimeout:
            self._replace()
            return f"loading took longer than {self.timeout_s:g} s (FITSTREAM_PROMOTER_LOAD_TIMEOUT_SECONDS)"
        except BrokenProcessPool:
            self._replace()
            return "the Keras process crashed while loading it"

    def check(self, path: str) -> str | None:
        """Load ``path`` and wait: None if it loads, else why not."""
        return self.result(self.submit(path))

    def _replace(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()  # a hung load would otherwise outlive the refusal
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def configured_load_check(settings: Settings) -> KerasLoadCheck | None:
    """The load check ``FITSTREAM_PROMOTER_LOAD_CHECK`` asks for (None when it is turned off)."""
    if not settings.promoter_load_check:
        log.warning("FITSTREAM_PROMOTER_LOAD_CHECK is off: checkpoints are promoted without a Keras load")
        return None
    return KerasLoadCheck(timeout_s=settings.promoter_load_timeout_seconds)
