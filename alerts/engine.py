"""Where the alert service's parts have always been imported from: it holds no code of its own.

The alerter (events to rule states and outbox rows) is :mod:`alerts.alerter`; the outbox and its
deliverer (outbox rows to Slack and webhooks) are :mod:`alerts.outbox`; the channels a rules file
defines are built by :mod:`alerts.channels.configured`. ``from alerts.engine import ...`` keeps
working for each name below.
"""

from __future__ import annotations

from alerts.alerter import GROUP, STALL_CHECK_S, Alerter, StallWatcher
from alerts.channels.configured import build_channels
from alerts.outbox import DELIVERY_POLL_S, RETRY_INITIAL_S, RETRY_MAX_S, Deliverer

__all__ = [
    "DELIVERY_POLL_S",
    "GROUP",
    "RETRY_INITIAL_S",
    "RETRY_MAX_S",
    "STALL_CHECK_S",
    "Alerter",
    "Deliverer",
    "StallWatcher",
    "build_channels",
]
