"""The Keras side of Fitstream. ``EventPublisher`` (imports Keras) is loaded on first use,
so that ``pipeline.callbacks.spool`` stays usable without TensorFlow."""

from __future__ import annotations

from typing import Any

__all__ = ["EventPublisher", "ResumableBackup"]


def __getattr__(name: str) -> Any:
    if name == "EventPublisher":
        from pipeline.callbacks.publisher import EventPublisher

        return EventPublisher
    if name == "ResumableBackup":
        from pipeline.callbacks.resume import ResumableBackup

        return ResumableBackup
    raise AttributeError(f"module 'pipeline.callbacks' has no attribute {name!r}")
