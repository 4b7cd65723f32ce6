"""How a Fitstream process names itself to the others: as a consumer in a group, as the owner of
a lease (a run's, a group leader's, a promotion lock's).

Example:
    >>> import os
    >>> process_identity().endswith(f"-{os.getpid()}")
    True
"""

from __future__ import annotations

import os
import socket


def process_identity() -> str:
    """``<hostname>-<pid>``: unique among live processes, and it says where to look."""
    return f"{socket.gethostname()}-{os.getpid()}"
