"""Fitstream's core: settings, event schema, stream, callbacks, SQL history, consumers, CLI.

``from pipeline import EventPublisher, ResumableBackup`` is the entry point for users'
own training scripts. Both are imported lazily so that the CLI and the consumers
never import TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["EventPublisher", "ResumableBackup", "__version__"]

if TYPE_CHECKING:
    from pipeline.callbacks.publisher import EventPublisher
    from pipeline.callbacks.resume import ResumableBackup


def __getattr__(name: str) -> Any:
    if name == "EventPublisher":
        from pipeline.callbacks.publisher import EventPublisher

        return EventPublisher
    if name == "ResumableBackup":
        from pipeline.callbacks.resume import ResumableBackup

        return ResumableBackup
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
