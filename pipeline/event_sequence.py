"""Sequence numbers: one allocation for every origin of a run's events.

A run's events come from several processes; each allocates its numbers here, so that all of them
sort in the order they happened::

    run_queued               0                      (fitstream submit)
    cancelled before start   1                      (fitstream cancel of a queued job)
    training attempt N       N × 1,000,000 + i      (the publisher, attempt 1, 2, …)
    promoter                 10¹³ + 4 × trigger + k (after everything the run published)

:mod:`pipeline.events` re-exports every name here.
"""

from __future__ import annotations

#: The queue path's own events (``fitstream submit`` and ``cancel``) come first.
QUEUED_SEQ = 0
CANCELLED_BEFORE_START_SEQ = 1
#: Training attempt N numbers its events from N × ATTEMPT_BLOCK.
ATTEMPT_BLOCK = 1_000_000
MAX_ATTEMPTS = 9_999
#: The promoter's events follow everything a run's attempts can publish.
PROMOTION_BASE = 10**13
PROMOTION_OUTCOMES = ("promotion_skipped", "model_promoted", "champion_kept")


def attempt_first_seq(attempt: int) -> int:
    """The first sequence number of training attempt ``attempt`` (1 for the first try).

    Example:
        >>> attempt_first_seq(2)
        2000000
    """
    if not isinstance(attempt, int) or not 1 <= attempt <= MAX_ATTEMPTS:
        raise ValueError(f"attempt must be an integer from 1 to {MAX_ATTEMPTS}; got {attempt!r}")
    return attempt * ATTEMPT_BLOCK


def promotion_seq(trigger_seq: int, outcome: str) -> int:
    """The sequence number of the promoter's ``outcome`` event for the event ``trigger_seq``
    (``early_stopped`` or ``run_finished``): after every event of the run, in trigger order,
    and the same on every redelivery of the trigger.

    Example:
        >>> promotion_seq(1_000_042, "model_promoted") > attempt_first_seq(MAX_ATTEMPTS) + ATTEMPT_BLOCK
        True
    """
    return PROMOTION_BASE + trigger_seq * len(PROMOTION_OUTCOMES) + PROMOTION_OUTCOMES.index(outcome)
