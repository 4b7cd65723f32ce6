"""One job's process hands the GPU to the next: the next job starts training only once the
previous job's process has exited, so the GPU memory TensorFlow took is back with the driver.

A worker keeps a warm spare child (TensorFlow imported, GPU untouched) beside the one training,
and Celery hands it the next job the moment the current one is acknowledged — while the current
child may still be tearing down. ``wait_for_previous_job`` closes that gap: every job's process
takes an exclusive ``flock`` on the worker's handover file and keeps it until it exits; the next
one, once it holds the lock, also waits until the process that held it before is gone (the
kernel releases a lock as it closes the process's files, possibly before the driver has freed the
process's GPU memory; a process that has exited or become a zombie holds none).

The file lives on the worker's own machine (the system's temp directory), never on shared storage:
a lock and a process id mean something only on one host.

Example (in a job's process, before anything touches the GPU)::

    >>> from pathlib import Path
    >>> handover_path("gpu0@box", root=Path("/tmp/fitstream-handover"))
    PosixPath('/tmp/fitstream-handover/gpu0@box.lock')
    >>> # waited = wait_for_previous_job(handover_path(task.request.hostname))
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: This process's handover file, open (and locked) until the process exits.
_held: int | None = None


def handover_path(worker_name: str, *, root: Path | None = None) -> Path:
    """The handover file of the worker ``worker_name`` (one per worker, so one per GPU), in
    ``root`` (default: ``fitstream-handover`` in the system's temp directory, local to this host)."""
    safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", worker_name).lstrip(".") or "worker"
    return (root or Path(tempfile.gettempdir()) / "fitstream-handover") / f"{safe}.lock"


def _exited(pid: int) -> bool:
    """True when ``pid`` runs no more: gone, or a zombie (its files and memory already released)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:  # no /proc (not Linux): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def wait_for_previous_job(path: Path, *, poll_s: float = 0.01, warn_every_s: float = 30.0) -> float:
    """Block until the previous job's process on this worker has exited; returns the seconds waited.

    The lock taken here is held until this process exits (one job per child). Calling it twice in
    one process returns at once.
    """
    global _held
    if _held is not None:
        return 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    t0 = time.monotonic()
    next_warning = t0 + warn_every_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= next_warning:
                log.warning(
                    "waiting %.0f s for the previous job on this worker to end (%s)",
                    time.monotonic() - t0,
                    path,
                )
                next_warning += warn_every_s
            time.sleep(poll_s)
    previous = os.pread(fd, 32, 0).decode(errors="replace").strip()
    if previous.isdigit() and int(previous) != os.getpid():
        while not _exited(int(previous)):
            if time.monotonic() >= next_warning:
                log.warning(
                    "waiting %.0f s for process %s (the previous job) to exit",
                    time.monotonic() - t0,
                    previous,
                )
                next_warning += warn_every_s
            time.sleep(poll_s)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held = fd
    return time.monotonic() - t0
