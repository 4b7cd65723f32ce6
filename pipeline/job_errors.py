"""The error an invalid job spec raises, and how its messages quote a value they received."""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigurationError


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` as an error quotes it: at most ``limit`` characters (a value may be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


class JobSpecError(ConfigurationError):
    """A job spec is invalid. Not retryable: the message lists every problem and how to fix it."""

    def __init__(self, problems: list[str], source: str = "job spec") -> None:
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))
