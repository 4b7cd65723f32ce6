"""Every Redis key Fitstream writes, named in one place (Celery's own broker keys aside).

Stream keys (one per shard) and the keys derived from a shard's key, so that a Redis Cluster
keeps them in the shard's slot (a hash-tagged shard key carries its tag into them):

=====================================  ==========================================================
``fitstream:events``                   the event stream (one shard on a plain Redis)
``{fitstream:events:<i>}``             shard ``i`` of ``FITSTREAM_STREAM_SHARDS`` > 1, or on a cluster
``<shard>:dead``                       dead letters, with the reason
``<shard>:dead:counts`` / ``:kinds``   dead letters counted per group and per kind
``<shard>:forced_trims``               entries trimmed before every group had read them
``<shard>:<group>:states``             each consumer's state in its group (``fitstream status``)
``<shard>:<group>:leader``             the lease of an ordered group's leader
``<stream>:promoting:<model>``         one promotion per model name at a time
``fitstream:<kind>:<id>``              queued jobs: ``job``, ``state``, ``attempts``, ``cancel``,
                                       ``sweep``, ``sweeps:open``, ``sweep-lock``
``fitstream:lease:<run_id>``           the lease of the worker training a run
=====================================  ==========================================================

Example:
    >>> shard_stream("fitstream:events", 2, 4), dead_letters("{fitstream:events:2}")
    ('{fitstream:events:2}', '{fitstream:events:2}:dead')
    >>> group_leader("fitstream:events", "alerter"), job_key("fitstream", "state", "r1")
    ('fitstream:events:alerter:leader', 'fitstream:state:r1')
"""

from __future__ import annotations

#: The prefix of the queue-side keys (jobs, their states and leases).
JOB_KEY_PREFIX = "fitstream"


def shard_stream(base: str, shard: int, shards: int, *, cluster: bool = False) -> str:
    """The stream key of ``shard``: the base name itself for one shard on a plain Redis (as before
    sharding existed), else hash-tagged so its derived keys (``:dead``, counters) share its slot."""
    if shards == 1 and not cluster:
        return base
    return f"{{{base}:{shard}}}"


def dead_letters(stream: str) -> str:
    return f"{stream}:dead"


def dead_letter_counts(stream: str) -> str:
    return f"{stream}:dead:counts"


def dead_letter_kinds(stream: str) -> str:
    return f"{stream}:dead:kinds"


def forced_trims(stream: str) -> str:
    return f"{stream}:forced_trims"


def consumer_states(stream: str, group: str) -> str:
    return f"{stream}:{group}:states"


def group_leader(stream: str, group: str) -> str:
    """The lease of an ordered group's leader (it holds the leader's consumer name)."""
    return f"{stream}:{group}:leader"


def promotion_lock(base_stream: str, model_name: str) -> str:
    """Global across shards: keyed on the base stream name."""
    return f"{base_stream}:promoting:{model_name}"


def job_key(prefix: str, kind: str, name: str) -> str:
    """A queued job's record (``kind``: job, state, attempts, cancel, sweep, sweeps, sweep-lock)."""
    return f"{prefix}:{kind}:{name}"


def run_lease(prefix: str, run_id: str) -> str:
    return f"{prefix}:lease:{run_id}"
