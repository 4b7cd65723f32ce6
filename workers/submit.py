"""Queueing and cancelling jobs: plain functions behind ``fitstream submit`` and ``fitstream cancel``.

Example:
    >>> run_id = submit_job(load_spec("examples/digits_mlp.yaml"))   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from pipeline import events as ev
from pipeline.bus import EventStream, connect
from pipeline.config import Settings, get_settings
from pipeline.errors import ConfigurationError, RunNotFoundError
from pipeline.job_records import JobRecords, SweepRecord
from pipeline.jobs import JobSpec, JobSpecError, check_importable
from pipeline.params import ParamsError, spec_params
from pipeline.sweeps import SWEEP_CANCELLED_REASON, Sweep
from workers.celery_app import TRAIN_TASK, make_app

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    run_id: str
    queue: str
    stream_id: str


@dataclass(frozen=True)
class SubmittedSweep:
    sweep_id: str
    run_ids: tuple[str, ...]
    queue: str
    queued_now: int  # trials sent to the queue at once; the rest wait for max_parallel
    stream_id: str  # the first trial's run_queued event


#: The broker's set of every queue a job was ever submitted to (the built-in ones are always shown).
QUEUES_USED_KEY = "fitstream:queues"


def _run_queued(spec: JobSpec, run_id: str, queue: str, sweep: ev.SweepTrial | None = None) -> ev.RunQueued:
    dump = spec.model_dump(mode="json", by_alias=True)
    try:
        params = spec_params(dump)
    except ParamsError as exc:
        where = f"trial {sweep.trial + 1}: " if sweep is not None else ""
        raise JobSpecError([f"{where}{exc}"]) from None
    return ev.build(
        ev.RunQueued,
        run_id=run_id,
        seq=ev.QUEUED_SEQ,
        name=spec.name,
        queue=queue,
        spec=dump,
        tags=spec.tags,
        params=params,
        sweep=sweep,
    )


def submit_job(spec: JobSpec, *, queue: str | None = None, settings: Settings | None = None) -> Submitted:
    """Validate ``spec`` against the deployment, record it, announce it, and queue it."""
    settings = settings or get_settings()
    _check(spec, settings)
    queue = queue or spec.queue
    run_id = uuid.uuid4().hex
    event = _run_queued(spec, run_id, queue)  # made (and its parameters checked) before anything is written
    client = connect(settings.redis_url)
    store = JobRecords(client)
    store.save(run_id, spec, queue=queue)
    store.set_state(run_id, "queued")
    stream_id = EventStream(client=client, settings=settings).publish([event])[0]
    connect(settings.celery_broker_url).sadd(QUEUES_USED_KEY, queue)  # so that `fitstream status` lists it
    make_app(settings).send_task(TRAIN_TASK, args=[run_id], task_id=run_id, queue=queue)
    return Submitted(run_id, queue, stream_id)


def _check(spec: JobSpec, settings: Settings) -> None:
    check_importable(spec, settings.allowed_modules)
    if spec.alerts:
        check_job_alerts(spec, settings)


def submit_sweep(
    sweep: Sweep, *, queue: str | None = None, settings: Settings | None = None
) -> SubmittedSweep:
    """Queue every trial of ``sweep`` as an ordinary run sharing one ``sweep_id``: all are announced
    (``run_queued``, so the history lists them at once), ``max_parallel`` of them go to the queue and
    the rest wait in Redis until :func:`release_trials` gives them a free place. Every trial is checked
    against the deployment before anything is queued."""
    settings = settings or get_settings()
    checked: set[str] = set()
    for trial in sweep.trials:  # trials differ in values, rarely in code: check each code reference once
        refs = trial.spec.model_dump_json(
            include={"model": {"fn"}, "data": {"fn"}, "callbacks": True, "lr_schedule": True, "alerts": True}
        )
        if refs not in checked:
            checked.add(refs)
            try:
                _check(trial.spec, settings)
            except JobSpecError as exc:
                raise JobSpecError([f"trial {trial.index + 1}: {p}" for p in exc.problems]) from None
    queue = queue or sweep.trials[0].spec.queue
    sweep_id = uuid.uuid4().hex
    run_ids = tuple(uuid.uuid4().hex for _ in sweep.trials)
    section = sweep.settings.as_json()
    events = [  # made (and their parameters checked) before anything is written
        _run_queued(
            trial.spec,
            run_id,
            queue,
            ev.SweepTrial(id=sweep_id, name=sweep.name, trial=trial.index, trials=len(run_ids), spec=section),
        )
        for run_id, trial in zip(run_ids, sweep.trials)
    ]
    client = connect(settings.redis_url)
    store = JobRecords(client)
    for run_id, trial in zip(run_ids, sweep.trials):
        store.save(run_id, trial.spec, queue=queue, sweep_id=sweep_id)
        store.set_state(run_id, "waiting")
    # Open from here on: should this process die before it queues the first trials, the next worker
    # to start queues them (release_open_sweeps).
    store.save_sweep(
        sweep_id, SweepRecord(sweep.name, list(run_ids), queue, sweep.settings.max_parallel, time.time())
    )
    stream_ids = EventStream(client=client, settings=settings).publish(events)
    connect(settings.celery_broker_url).sadd(QUEUES_USED_KEY, queue)
    queued_now = release_trials(sweep_id, settings=settings)
    return SubmittedSweep(sweep_id, run_ids, queue, queued_now, stream_ids[0])


def release_trials(sweep_id: str, *, settings: Settings | None = None) -> int:
    """Queue a sweep's waiting trials, in order, while fewer than ``max_parallel`` of its trials are
    queued or running. Called when the sweep is submitted and whenever one of its trials ends (by the
    worker's task, and by ``fitstream cancel``); safe to call at any time, from any process: it works
    under the sweep's lock in Redis, from the trials' states there. Returns how many it queued."""
    settings = settings or get_settings()
    store = JobRecords(connect(settings.redis_url))
    record = store.load_sweep(sweep_id)
    if record is None:
        return 0
    app = make_app(settings)
    released = 0
    with store.sweep_lock(sweep_id):
        states = [(run_id, store.state(run_id)) for run_id in record.run_ids]
        active = sum(1 for _, state in states if state in ("queued", "running"))
        limit = record.max_parallel or len(record.run_ids)
        waiting = [run_id for run_id, state in states if state == "waiting"]
        for run_id in waiting[: max(0, limit - active)]:
            # Sent first, then marked — only if still waiting (the worker may have taken it already):
            # a crash in between sends it again on the next call, and the second delivery of a run
            # that is training or has ended does not train (run_job).
            app.send_task(TRAIN_TASK, args=[run_id], task_id=run_id, queue=record.queue)
            store.move_state(run_id, "waiting", "queued")
            released += 1
        if released == len(waiting):
            store.close_sweep(sweep_id)
        store.keep_alive([run_id for run_id, state in states if state != "finished"], sweep_id)
    return released


def release_open_sweeps(*, settings: Settings | None = None) -> int:
    """Queue the waiting trials of every open sweep that has room: what a worker does when it
    starts, so that a sweep whose release was interrupted (a submit or a job killed at the wrong
    moment, Redis away when a trial ended) goes on."""
    settings = settings or get_settings()
    store = JobRecords(connect(settings.redis_url))
    released = 0
    for sweep_id in store.open_sweeps():
        if store.load_sweep(sweep_id) is None:
            store.close_sweep(sweep_id)  # expired
            continue
        released += release_trials(sweep_id, settings=settings)
    return released


def release_waiting_trials(run_id: str, *, settings: Settings | None = None) -> int:
    """After run ``run_id`` ended: queue the next waiting trials of its sweep, if it is a trial.
    Never raises (the run's own outcome is what the task reports); a failure is logged, and the
    next trial to end, or the next worker to start, queues them."""
    settings = settings or get_settings()
    try:
        sweep_id = JobRecords(connect(settings.redis_url)).sweep_of(run_id)
        return release_trials(sweep_id, settings=settings) if sweep_id is not None else 0
    except Exception as exc:
        log.error("run %s: could not queue the next trials of its sweep: %s", run_id, exc)
        return 0


def cancel_job(run_id: str, *, settings: Settings | None = None) -> str:
    """Cancel a queued or running job, or every unfinished trial of a sweep (``run_id`` a sweep id).

    Returns what happened: ``revoked`` or ``stopping`` for a run; for a sweep, e.g. ``3 revoked, 2 stopping``.
    """
    settings = settings or get_settings()
    client = connect(settings.redis_url)
    store = JobRecords(client)
    sweep = store.load_sweep(run_id)
    if sweep is not None:
        return _cancel_sweep(run_id, sweep, store, settings)
    outcome = _cancel_run(run_id, store, settings)
    trial_of = store.sweep_of(run_id)
    if trial_of is not None:
        release_trials(trial_of, settings=settings)
    return outcome


def _cancel_run(run_id: str, store: JobRecords, settings: Settings, *, reason: str | None = None) -> str:
    state = store.state(run_id)
    if state is None:
        raise RunNotFoundError(
            f"no queued or running job (or sweep) with id {run_id!r}; list runs with: fitstream runs"
        )
    if state == "finished":
        raise ConfigurationError(f"run {run_id} has already finished; nothing to cancel")
    store.request_cancel(run_id, reason=reason)
    if state in ("queued", "waiting"):
        if state == "queued":
            make_app(settings).control.revoke(run_id)
        store.set_state(run_id, "finished")
        EventStream(client=store.client, settings=settings).publish(
            [
                ev.build(
                    ev.RunFinished,
                    run_id=run_id,
                    seq=ev.CANCELLED_BEFORE_START_SEQ,
                    status="cancelled",
                    epochs_completed=0,
                    reason=reason,
                )
            ]
        )
        return "revoked"
    return "stopping"


def _cancel_sweep(sweep_id: str, sweep: SweepRecord, store: JobRecords, settings: Settings) -> str:
    outcomes: dict[str, int] = {}
    with store.sweep_lock(sweep_id):  # no trial is released while its sweep is being cancelled
        for run_id in sweep.run_ids:
            if store.state(run_id) in (None, "finished"):
                continue
            try:
                outcome = _cancel_run(run_id, store, settings, reason=SWEEP_CANCELLED_REASON)
            except (ConfigurationError, RunNotFoundError):  # it ended (or expired) a moment ago
                continue
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        store.close_sweep(sweep_id)
    if not outcomes:
        raise ConfigurationError(f"every trial of sweep {sweep_id} has already finished; nothing to cancel")
    return ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))


def check_job_alerts(spec: JobSpec, settings: Settings) -> None:
    """A job's ``alerts:`` must be valid rules over the rules file's channels, with their own names."""
    from alerts.rules import RulesError, load_rules, parse_rules

    if settings.alert_rules is None:
        raise JobSpecError(
            [
                "alerts: the job defines alert rules, but FITSTREAM_ALERT_RULES is not set (channels are defined there)"
            ]
        )
    global_rules = load_rules(settings.alert_rules)
    try:
        job_rules = parse_rules(
            {"channels": dict(global_rules.channels), "rules": spec.alerts}, source="alerts"
        )
    except RulesError as exc:
        raise JobSpecError(
            [
                line.strip().removeprefix("- ").replace("rules.", "alerts.", 1)
                for line in str(exc).splitlines()[1:]
            ]
        ) from None
    clashes = sorted({r.name for r in job_rules.rules} & {r.name for r in global_rules.rules})
    if clashes:
        raise JobSpecError(
            [
                f"alerts: rule name(s) {', '.join(clashes)} already used in {settings.alert_rules}; pick other names"
            ]
        )
