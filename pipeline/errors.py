"""Fitstream's error tree.

Every error Fitstream raises on purpose derives from :class:`FitstreamError`.
Errors about bad input also inherit :class:`ValueError`, so callers that only
know the builtin still catch them. Each docstring says whether retrying helps.
"""

from __future__ import annotations


class FitstreamError(Exception):
    """Base of every error Fitstream raises on purpose."""


class ConfigurationError(FitstreamError, ValueError):
    """A setting or argument is wrong. Not retryable: fix the value named in the message."""


class MonitorNotFoundError(FitstreamError, ValueError):
    """A callback monitors a metric the model does not log. Not retryable."""


class InvalidEventError(FitstreamError, ValueError):
    """A stream payload is malformed or has an unknown schema version. Not retryable:
    such payloads go to the dead-letter stream."""


class SchemaNotAtHeadError(FitstreamError):
    """The database schema is older (or newer) than this Fitstream. Run the command in the message."""


class DatabaseError(FitstreamError):
    """The database refused or failed an operation. Retryable when ``transient`` is true (the
    database's state, not the data, caused it); ``code`` is its SQLSTATE or SQLite error name."""

    def __init__(self, message: str, *, transient: bool = False, code: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.code = code


class ReadOnlyViolationError(DatabaseError):
    """A read-only session was asked to write. Not retryable."""


class QueryTimeoutError(DatabaseError, TimeoutError):
    """A read-only query ran past its time limit and was cancelled. Narrow it, or raise the limit."""


class StreamUnavailableError(FitstreamError, ConnectionError):
    """Redis could not be reached. Retryable once Redis answers."""


class RunNotFoundError(FitstreamError, LookupError):
    """No run with the given id (or id prefix). Not retryable."""
