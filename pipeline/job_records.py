"""Queued jobs' specs, cancel flags, attempt counters and run leases, kept in Redis.

The worker never writes SQL; what it needs to know about a queued run it reads
here, by run id. A *lease* (a key with a TTL, renewed by a heartbeat while the
run trains) makes sure a run trains on one worker at a time: Celery's Redis
transport re-delivers an unacknowledged task after ``visibility_timeout``, and
that second delivery must not train while the first worker is alive.

Example:
    >>> store = JobRecords(redis.Redis())                         # doctest: +SKIP
    >>> store.save("r1", spec)                                  # doctest: +SKIP
    >>> lease = RunLease(store.client, "r1", owner="w1", ttl_s=30)  # doctest: +SKIP
    >>> lease.acquire()                                         # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

import redis

from pipeline import redis_keys
from pipeline.jobs import JobSpec, parse_spec, spec_to_json
from pipeline.lease import RedisLease

KEY_PREFIX = redis_keys.JOB_KEY_PREFIX
#: Job records outlive their run for a week (resume, watch, audits).
JOB_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class JobRecord:
    run_id: str
    spec: JobSpec
    queue: str
    submitted_at: float
    sweep_id: str | None = None  # the sweep this run is a trial of


_COMPARE_AND_SET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class CancelRequest:
    status: str  # cancelled or pruned
    reason: str | None


@dataclass(frozen=True)
class SweepRecord:
    """What the queue side keeps of a sweep: its trials in order, and how many may be queued at once."""

    name: str
    run_ids: list[str]
    queue: str
    max_parallel: int | None
    submitted_at: float


class JobRecords:
    """Job records and per-run flags in Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str = KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._compare_and_set = client.register_script(_COMPARE_AND_SET)

    def _key(self, kind: str, run_id: str) -> str:
        return redis_keys.job_key(self.prefix, kind, run_id)

    def save(
        self, run_id: str, spec: JobSpec, *, queue: str | None = None, sweep_id: str | None = None
    ) -> JobRecord:
        record = JobRecord(run_id, spec, queue or spec.queue, time.time(), sweep_id)
        payload = json.dumps(
            {
                "spec": json.loads(spec_to_json(spec)),
                "queue": record.queue,
                "submitted_at": record.submitted_at,
                "sweep_id": sweep_id,
            }
        )
        self.client.set(self._key("job", run_id), payload, ex=JOB_TTL_S)
        return record

    def load(self, run_id: str) -> JobRecord | None:
        raw = self.client.get(self._key("job", run_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return JobRecord(
            run_id, parse_spec(data["spec"]), data["queue"], data["submitted_at"], data.get("sweep_id")
        )

    def sweep_of(self, run_id: str) -> str | None:
        """The sweep whose trial ``run_id`` is (None for a lone run, or one whose record expired)."""
        raw = self.client.get(self._key("job", run_id))
        return json.loads(raw).get("sweep_id") if raw is not None else None

    def next_attempt(self, run_id: str) -> int:
        key = self._key("attempts", run_id)
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, JOB_TTL_S)
        return int(pipe.execute()[0])

    def request_cancel(self, run_id: str, *, status: str = "cancelled", reason: str | None = None) -> None:
        """Ask the run to stop at its next batch and end as ``status`` (cancelled, or pruned) because of ``reason``."""
        self.client.set(
            self._key("cancel", run_id), json.dumps({"status": status, "reason": reason}), ex=JOB_TTL_S
        )

    def cancel_requested(self, run_id: str) -> bool:
        return bool(self.client.exists(self._key("cancel", run_id)))

    def cancel_request(self, run_id: str) -> CancelRequest | None:
        """The pending stop request of a run (its status and reason), or None."""
        raw = self.client.get(self._key("cancel", run_id))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return CancelRequest(str(data.get("status") or "cancelled"), data.get("reason"))
        except (ValueError, AttributeError):  # written by an earlier Fitstream: "1"
            return CancelRequest("cancelled", None)

    # -- sweeps -----------------------------------------------------------------------------
    def save_sweep(self, sweep_id: str, record: SweepRecord) -> None:
        pipe = self.client.pipeline()
        pipe.set(self._key("sweep", sweep_id), json.dumps(record.__dict__), ex=JOB_TTL_S)
        pipe.sadd(self._key("sweeps", "open"), sweep_id)
        pipe.execute()

    def open_sweeps(self) -> list[str]:
        """Sweeps that may still have trials waiting (a worker starting up releases them)."""
        return sorted(raw.decode() for raw in self.client.smembers(self._key("sweeps", "open")))

    def close_sweep(self, sweep_id: str) -> None:
        """No trial of the sweep waits any more."""
        self.client.srem(self._key("sweeps", "open"), sweep_id)

    def load_sweep(self, sweep_id: str) -> SweepRecord | None:
        raw = self.client.get(self._key("sweep", sweep_id))
        return SweepRecord(**json.loads(raw)) if raw is not None else None

    def sweep_lock(self, sweep_id: str, *, timeout_s: float = 30.0) -> redis.lock.Lock:
        """The lock under which a sweep's waiting trials are queued (redis-py's own lock)."""
        return self.client.lock(
            self._key("sweep-lock", sweep_id), timeout=timeout_s, blocking_timeout=timeout_s
        )

    def set_state(self, run_id: str, state: str) -> None:
        """The queue-side state (queued / running / finished) that `fitstream cancel` and `watch` read."""
        self.client.set(self._key("state", run_id), state, ex=JOB_TTL_S)

    def move_state(self, run_id: str, expected: str, new: str) -> bool:
        """Set the state to ``new`` only if it is still ``expected`` (one atomic step in Redis)."""
        return bool(self._compare_and_set(keys=[self._key("state", run_id)], args=[expected, new, JOB_TTL_S]))

    def attempts(self, run_id: str) -> int:
        """How many training attempts of the run have started."""
        raw = self.client.get(self._key("attempts", run_id))
        return int(raw) if raw is not None else 0

    def keep_alive(self, run_ids: list[str], sweep_id: str | None = None) -> None:
        """Push back the expiry of these runs' records (and of their sweep's): a long sweep keeps
        its waiting trials for as long as it runs, not a week from its submission."""
        pipe = self.client.pipeline()
        for run_id in run_ids:
            for kind in ("job", "state", "attempts", "cancel"):
                pipe.expire(self._key(kind, run_id), JOB_TTL_S)
        if sweep_id is not None:
            pipe.expire(self._key("sweep", sweep_id), JOB_TTL_S)
        pipe.execute()

    def state(self, run_id: str) -> str | None:
        raw = self.client.get(self._key("state", run_id))
        return raw.decode() if raw is not None else None


class RunLease(RedisLease):
    """A lease on one run: only its holder trains it. Renew it well within ``ttl_s``.

    Owners are named ``<host>-<pid>``: a training process killed on this host (an OOM kill,
    with its worker alive) is seen dead at once, and the worker's next delivery of the run
    takes its lease over instead of waiting for it to expire.
    """

    def __init__(
        self, client: redis.Redis, run_id: str, *, owner: str, ttl_s: float, prefix: str = KEY_PREFIX
    ) -> None:
        super().__init__(client, redis_keys.run_lease(prefix, run_id), owner=owner, ttl_s=ttl_s)

    def acquire_from_dead(self) -> bool:
        """Take the lease if nobody holds it, or if its holder is a dead process on this host."""
        if self.acquire():
            return True
        holder = self.holder()
        if holder is None:
            return self.acquire()
        return holder_is_dead(holder) and self.take_from(holder)


def holder_is_dead(holder: str) -> bool:
    """Whether the owner ``<host>-<pid>`` is a process of this host that no longer exists."""
    host, _, pid = holder.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # killed but not yet reaped by its parent: a zombie
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
