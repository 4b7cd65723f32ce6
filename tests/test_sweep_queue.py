"""The queue side of sweeps on a real Redis and broker, without a worker (issue 12 review): the
release marks only trials still waiting, an interrupted release is finished by the next worker to
start, a sweep cancel skips trials that end meanwhile, and a run whose stop was asked while it
trained, and whose process then died, still ends with that status and reason."""

from __future__ import annotations

import uuid

import pytest
import redis

from pipeline import events as ev
from pipeline.job_records import JobRecords
from pipeline.sweeps import parse_sweep_text
from workers.submit import cancel_job, release_open_sweeps, release_trials, submit_sweep

SWEEP = (
    "name: q\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\n"
    "sweep:\n  grid: {model.kwargs.hidden: [8, 16, 32]}\n  max_parallel: 1\n"
)


def _once(database_url: str) -> None:
    if database_url.startswith("postgresql"):
        pytest.skip("the queue side is Redis only; checked once, beside SQLite")


def _sweep(settings, queue_name):
    return submit_sweep(parse_sweep_text(SWEEP), queue=queue_name, settings=settings)


def test_the_release_marks_queued_only_a_trial_that_still_waits(settings, queue_name, database_url):
    _once(database_url)
    store = JobRecords(redis.Redis.from_url(settings.redis_url))
    cas_run = uuid.uuid4().hex
    store.set_state(cas_run, "waiting")
    assert store.move_state(cas_run, "waiting", "queued") and store.state(cas_run) == "queued"
    store.set_state(cas_run, "running")  # the worker took it between send_task and the mark
    assert not store.move_state(cas_run, "waiting", "queued") and store.state(cas_run) == "running"


def test_an_interrupted_release_is_finished_by_the_next_worker_to_start(settings, queue_name, database_url):
    _once(database_url)
    submitted = _sweep(settings, queue_name)
    store = JobRecords(redis.Redis.from_url(settings.redis_url))
    broker = redis.Redis.from_url(settings.celery_broker_url)
    first, second, third = submitted.run_ids
    assert [store.state(r) for r in submitted.run_ids] == ["queued", "waiting", "waiting"] and broker.llen(
        queue_name
    ) == 1
    assert submitted.sweep_id in store.open_sweeps()
    # The first trial ended, but its process died before it could release the next (no release call).
    broker.delete(queue_name)
    store.set_state(first, "finished")
    assert release_open_sweeps(settings=settings) == 1  # what a starting worker does
    assert [store.state(r) for r in submitted.run_ids] == ["finished", "queued", "waiting"] and broker.llen(
        queue_name
    ) == 1
    assert release_open_sweeps(settings=settings) == 0  # the sweep is full: nothing more, nothing twice
    store.set_state(second, "finished")
    assert release_trials(submitted.sweep_id, settings=settings) == 1 and store.state(third) == "queued"
    assert submitted.sweep_id not in store.open_sweeps()  # nothing waits any more


def test_cancelling_a_sweep_skips_a_trial_that_ended_meanwhile(
    settings, queue_name, database_url, monkeypatch
):
    _once(database_url)
    submitted = _sweep(settings, queue_name)
    store = JobRecords(redis.Redis.from_url(settings.redis_url))
    first = submitted.run_ids[0]
    real_state = JobRecords.state

    def state(self, run_id):  # the first trial ends between the sweep's look at it and its cancel
        value = real_state(self, run_id)
        if run_id == first and value == "queued":
            self.set_state(first, "finished")
        return value

    monkeypatch.setattr(JobRecords, "state", state)
    assert cancel_job(submitted.sweep_id, settings=settings) == "2 revoked"
    monkeypatch.undo()
    assert [store.state(r) for r in submitted.run_ids] == ["finished"] * 3
    finished = [ev.decode(f) for _i, f in redis.Redis.from_url(settings.redis_url).xrange(settings.stream)]
    cancelled = sorted(e.run_id for e in finished if e.type == "run_finished")
    assert cancelled == sorted(submitted.run_ids[1:])


def test_a_run_stopped_while_it_trained_and_then_killed_still_ends_with_its_status(settings, database_url):
    _once(database_url)
    from pipeline.jobs import load_spec_text
    from pipeline.training import run_job

    store = JobRecords(redis.Redis.from_url(settings.redis_url))
    stopped, never = (
        uuid.uuid4().hex,
        uuid.uuid4().hex,
    )  # fresh ids: attempt counters live in the shared Redis
    spec = load_spec_text("name: p\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\n")
    store.save(stopped, spec)
    store.set_state(stopped, "running")  # attempt 1 trained, then its process was killed…
    store.next_attempt(stopped)
    store.request_cancel(
        stopped, status="pruned", reason="pruned: behind the median"
    )  # …after the pruner asked
    assert run_job(stopped, settings=settings) == "pruned"
    events = [ev.decode(f) for _i, f in redis.Redis.from_url(settings.redis_url).xrange(settings.stream)]
    assert [(e.type, e.status, e.reason, e.seq) for e in events] == [
        ("run_finished", "pruned", "pruned: behind the median", ev.attempt_first_seq(2))
    ]
    assert store.state(stopped) == "finished"
    # A cancel asked before it ever started: `fitstream cancel` announced it; the delivery adds nothing.
    store.save(never, spec)
    store.set_state(never, "queued")
    store.request_cancel(never)
    assert run_job(never, settings=settings) == "cancelled"
    assert len(redis.Redis.from_url(settings.redis_url).xrange(settings.stream)) == 1
